//! Showing the check: a step list printed as the steps finish (with a live
//! spinner and colour on a terminal, plain text otherwise), or one JSON
//! document at the end with `--json`.
//!
//! Must not: print anything that did not go through the password redaction
//! in `attempt.rs` (server replies) — and it redacts once more anyway.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use console::Style;
use indicatif::{ProgressBar, ProgressStyle};

use super::diagnose::Diagnosis;
use super::probe::{Attempt, Finding, Report, Severity, Status, Step, StepKind, TlsMode};
use super::sasl::Secret;

/// Receives the steps as they happen.
pub trait Observer {
    fn attempt_started(&mut self, port: u16, tls: TlsMode);
    fn step_started(&mut self, step: StepKind);
    fn step_done(&mut self, step: &Step);
    fn finding(&mut self, finding: &Finding);
    fn attempt_done(&mut self, attempt: &Attempt);
}

/// `--json`: nothing while running.
pub struct Quiet;

impl Observer for Quiet {
    fn attempt_started(&mut self, _: u16, _: TlsMode) {}
    fn step_started(&mut self, _: StepKind) {}
    fn step_done(&mut self, _: &Step) {}
    fn finding(&mut self, _: &Finding) {}
    fn attempt_done(&mut self, _: &Attempt) {}
}

struct Styles {
    ok: Style,
    warn: Style,
    bad: Style,
    dim: Style,
    bold: Style,
}

impl Styles {
    fn new(colour: bool) -> Styles {
        let s = |style: Style| {
            if colour {
                style.force_styling(true)
            } else {
                Style::new()
            }
        };
        Styles {
            ok: s(Style::new().green()),
            warn: s(Style::new().yellow()),
            bad: s(Style::new().red().bold()),
            dim: s(Style::new().dim()),
            bold: s(Style::new().bold()),
        }
    }
}

/// The human-readable step list on stdout.
pub struct Text {
    styles: Styles,
    spinner: Option<ProgressBar>,
    tty: bool,
    secret: Option<std::sync::Arc<Secret>>,
    out: std::io::Stdout,
}

impl Text {
    pub fn new(secret: Option<std::sync::Arc<Secret>>) -> Text {
        let tty = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let colour = tty && std::env::var_os("NO_COLOR").is_none() && console::colors_enabled();
        Text {
            styles: Styles::new(colour),
            spinner: None,
            tty,
            secret,
            out: std::io::stdout(),
        }
    }

    fn line(&mut self, text: &str) {
        let text = match &self.secret {
            Some(secret) => secret.redact(text),
            None => text.to_owned(),
        };
        match &self.spinner {
            Some(spinner) => spinner.suspend(|| println!("{text}")),
            None => {
                let _ = writeln!(self.out, "{text}");
                let _ = self.out.flush();
            }
        }
    }

    pub fn header(&mut self, host: &str) {
        let text = format!("Checking {host}");
        let text = self.styles.bold.apply_to(text).to_string();
        self.line(&text);
    }

    pub fn dns(&mut self, step: &Step) {
        self.print_step("", step);
    }

    fn print_step(&mut self, indent: &str, step: &Step) {
        let (mark, style) = match step.status {
            Status::Pass => ("✓", &self.styles.ok),
            Status::Warn => ("!", &self.styles.warn),
            Status::Fail => ("✗", &self.styles.bad),
        };
        let mark = style.apply_to(mark).to_string();
        let text = format!("{indent}{mark} {:<11} {}", step.step.label(), step.summary);
        self.line(&text);
        let pad = format!("{indent}  {:<11} ", "");
        for detail in &step.details {
            let text = self
                .styles
                .dim
                .apply_to(format!("{pad}{detail}"))
                .to_string();
            self.line(&text);
        }
    }

    /// The closing lines: the recommendation, or the diagnosis to act on.
    pub fn summary(&mut self, report: &Report) {
        self.line("");
        if let Some(rec) = &report.recommendation {
            let text = self
                .styles
                .ok
                .apply_to(format!("Recommendation: {}", rec.text))
                .to_string();
            self.line(&text);
        }
        if let Some(diagnosis) = &report.diagnosis {
            if let (true, Some(port)) = (report.attempts.len() > 1, report.diagnosis_port) {
                let text = format!("No port passed every step; port {port} got furthest:");
                let text = self.styles.bad.apply_to(text).to_string();
                self.line(&text);
            }
            self.diagnosis(diagnosis);
        } else if report.ok {
            let passed = report.attempts.iter().filter(|a| a.ok).count();
            let text = if report.attempts.len() > 1 {
                format!(
                    "Result: {passed} of {} ports passed every requested step.",
                    report.attempts.len()
                )
            } else {
                "Result: every requested step passed.".to_owned()
            };
            let text = self.styles.ok.apply_to(text).to_string();
            self.line(&text);
        }
    }

    fn diagnosis(&mut self, d: &Diagnosis) {
        let heading = |s: &Styles, t: &str| s.bold.apply_to(t.to_owned()).to_string();
        let h = heading(&self.styles, "What happened");
        self.line(&h);
        self.line(&format!("  {}", d.what_happened));
        let h = heading(&self.styles, "Likely causes");
        self.line(&h);
        for cause in &d.likely_causes {
            self.line(&format!("  - {cause}"));
        }
        let h = heading(&self.styles, "What to do");
        self.line(&h);
        for todo in &d.what_to_do {
            self.line(&format!("  - {todo}"));
        }
    }

    fn stop_spinner(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
    }
}

impl Observer for Text {
    fn attempt_started(&mut self, port: u16, tls: TlsMode) {
        let tls = match tls {
            TlsMode::Auto => "TLS auto",
            TlsMode::Starttls => "STARTTLS",
            TlsMode::Implicit => "implicit TLS",
            TlsMode::None => "no TLS",
        };
        let text = self
            .styles
            .bold
            .apply_to(format!("Port {port} ({tls})"))
            .to_string();
        self.line(&text);
    }

    fn step_started(&mut self, step: StepKind) {
        if !self.tty {
            return;
        }
        self.stop_spinner();
        let spinner = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("  {spinner} {msg}") {
            spinner.set_style(style);
        }
        spinner.set_message(format!("{}…", step.label()));
        spinner.enable_steady_tick(Duration::from_millis(100));
        self.spinner = Some(spinner);
    }

    fn step_done(&mut self, step: &Step) {
        self.stop_spinner();
        self.print_step("  ", step);
    }

    fn finding(&mut self, finding: &Finding) {
        let (label, style) = match finding.severity {
            Severity::Info => ("note", &self.styles.dim),
            Severity::Warning => ("warning", &self.styles.warn),
        };
        let text = style
            .apply_to(format!("  {label}: {}", finding.text))
            .to_string();
        self.line(&text);
    }

    fn attempt_done(&mut self, attempt: &Attempt) {
        self.stop_spinner();
        if let (Some(d), false) = (&attempt.diagnosis, attempt.ok) {
            let text = self
                .styles
                .bad
                .apply_to(format!("  → {}", d.what_happened))
                .to_string();
            self.line(&text);
        }
    }
}

/// The report as one JSON document, with the password redacted.
pub fn json(report: &Report, secret: Option<&Secret>) -> String {
    let text = serde_json::to_string_pretty(report)
        .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"{e}\"}}"));
    match secret {
        Some(secret) => secret.redact(&text),
        None => text,
    }
}

/// `2026-12-01` from Unix seconds.
pub fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
