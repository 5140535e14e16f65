//! Sending domains and mail authentication (issue 7): DKIM keys and the DNS
//! records to publish, DKIM signing of submitted mail, SPF/DKIM/DMARC
//! verification of inbound mail, and `domain check`.
//!
//! The two hooks below run in the connection driver between the end of DATA
//! and the spool commit; they read the unfinished message back (from memory
//! or its spool file) and insert header fields before it is made durable.
//! They never see or log a
//! private key, and protocol decisions stay in `proto::Session` (a refusal
//! is an `EnqueueOutcome`).

pub mod canon;
pub mod check;
pub mod inbound;
pub mod keys;
pub mod records;
pub mod resolver;
pub mod sign;

use portcullis_proto::{EnqueueOutcome, Reply, ReversePath};
use portcullis_store::DkimKeyState;

use crate::config::Config;
use crate::spool::SpoolWriter;

/// The common domain of the From: addresses, if there is exactly one.
fn from_domain(header_block: &[u8]) -> Option<String> {
    let froms = portcullis_proto::header::from_addresses(header_block);
    let mut domains = froms
        .iter()
        .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()));
    let first = domains.next()?;
    domains.all(|d| d == first).then_some(first)
}

/// Whether [`prepare_submission`] would sign a message with this header
/// block: its From: domain has an active DKIM key. `true` when the lookup
/// fails (the caller then keeps hashing; signing reports the error).
pub(crate) async fn will_sign(
    directory: &crate::directory::Directory,
    header_block: &[u8],
) -> bool {
    let Some(domain) = from_domain(header_block) else {
        return false;
    };
    match directory.dkim_keys(&domain).await {
        Ok(keys) => keys.iter().any(|k| k.state == DkimKeyState::Active),
        Err(_) => true,
    }
}

/// Submission (authenticated sessions): RFC 6409 §8 fix-ups, then DKIM
/// signatures with every active key of the From: domain when it is a local
/// sending domain. `Err` is the reply to give instead of queueing.
pub(crate) async fn prepare_submission(
    directory: &crate::directory::Directory,
    hostname: &str,
    writer: &mut SpoolWriter,
    header_block: &[u8],
) -> Result<(), EnqueueOutcome> {
    let fixups = sign::fixup_headers(header_block, writer.id(), hostname);
    let Some(domain) = from_domain(header_block) else {
        writer.insert_headers(&fixups).await;
        return Ok(());
    };
    let stored = match directory.dkim_keys(&domain).await {
        Ok(keys) => keys,
        Err(e) => {
            tracing::error!(error = %e, domain, "DKIM key lookup failed");
            return Err(EnqueueOutcome::TemporaryFailure);
        }
    };
    let mut keys = Vec::new();
    for key in stored.iter().filter(|k| k.state == DkimKeyState::Active) {
        match keys::SigningKey::load_cached(key) {
            Ok(k) => keys.push(k),
            Err(e) => {
                tracing::error!(error = %e, domain, "cannot load DKIM key");
                return Err(EnqueueOutcome::TemporaryFailure);
            }
        }
    }
    if keys.is_empty() {
        writer.insert_headers(&fixups).await;
        return Ok(());
    }
    let selectors: Vec<String> = keys.iter().map(|k| k.selector.clone()).collect();
    let prefix = fixups.clone();
    let sign_domain = domain.clone();
    // A big message was hashed as it was written: no read-back (issue 9).
    let signed = if let Some((headers, body_hash)) = writer.take_hashed().await {
        tokio::task::spawn_blocking(move || {
            let mut block = prefix;
            block.extend_from_slice(&headers);
            sign::sign_hashed(&block, body_hash, &sign_domain, keys)
        })
        .await
    } else {
        let Some(message) = writer.readable().await else {
            // The write error is reported by commit.
            return Ok(());
        };
        match message {
            // Held in memory (at most `[spool] memory_threshold`): hash
            // and sign right here, about 0.3 ms with RSA-2048. A trip to
            // the blocking pool costs two thread wake-ups, and on this
            // 2-core VM signing inline measured +17% (b) and +5-10% (a)
            // throughput in alternating pairs, at less CPU (issue 9).
            small @ crate::spool::Readable::Memory(_) => {
                Ok(sign::sign_message(small, &prefix, &sign_domain, keys))
            }
            file => {
                tokio::task::spawn_blocking(move || {
                    sign::sign_message(file, &prefix, &sign_domain, keys)
                })
                .await
            }
        }
    };
    match signed {
        Ok(Ok(mut headers)) => {
            tracing::info!(
                target: "portcullis::mail",
                event = "dkim_signed",
                queue_id = writer.id(),
                domain,
                selectors = selectors.join(","),
                "message signed"
            );
            headers.extend_from_slice(&fixups);
            writer.insert_headers(&headers).await;
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, domain, "DKIM signing failed");
            Err(EnqueueOutcome::TemporaryFailure)
        }
        Err(e) => {
            tracing::error!(error = %e, domain, "DKIM signing task failed");
            Err(EnqueueOutcome::TemporaryFailure)
        }
    }
}

/// Inbound (smtp listener, unauthenticated): SPF, DKIM and DMARC, an
/// Authentication-Results field, and the refusal of a DMARC `p=reject`
/// failure when `[inbound] enforce_dmarc` is set.
pub(crate) async fn check_inbound(
    auth: &mail_auth::MessageAuthenticator,
    config: &Config,
    client_ip: std::net::IpAddr,
    writer: &mut SpoolWriter,
) -> Result<(), EnqueueOutcome> {
    let Some(message) = writer.readable().await else {
        return Ok(());
    };
    let raw = match message.read_all().await {
        Ok(raw) => raw,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the spooled message back");
            return Err(EnqueueOutcome::TemporaryFailure);
        }
    };
    let env = writer.envelope();
    let mail_from = match &env.from {
        ReversePath::Null => String::new(),
        ReversePath::Mailbox(m) => m.to_string(),
    };
    let tx = inbound::Transaction {
        client_ip,
        helo: &env.helo,
        mail_from: &mail_from,
        hostname: &config.hostname,
    };
    let verdict = inbound::verify(auth, &raw, &tx).await;
    let obscured = inbound::obscure_forged_results(&raw, &config.hostname);
    drop(raw);
    let refuse = verdict.dmarc_reject && config.inbound.enforce_dmarc;
    tracing::info!(
        target: "portcullis::mail",
        event = "mail_auth",
        queue_id = writer.id(),
        client_ip = %client_ip,
        from = %mail_from,
        header_from_domain = %verdict.from_domain,
        spf = verdict.spf,
        dkim = verdict.dkim,
        dmarc = verdict.dmarc,
        refused = refuse,
        "inbound authentication"
    );
    if refuse {
        return Err(EnqueueOutcome::Refused(Reply::dmarc_reject()));
    }
    match obscured {
        Some(message) => {
            tracing::info!(
                queue_id = writer.id(),
                "renamed Authentication-Results fields claiming to be ours (RFC 8601 5)"
            );
            writer
                .replace_message(verdict.header.as_bytes(), &message)
                .await;
        }
        None => writer.insert_headers(verdict.header.as_bytes()).await,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use portcullis_store::{SqliteStore, Store};

    use super::*;
    use crate::directory::Directory;

    /// The streaming DKIM hash of a spilled submission is kept only when
    /// the From: domain has an active key (issue 9: ~1 ms of CPU per MiB).
    #[tokio::test]
    async fn will_sign_only_for_a_from_domain_with_an_active_key() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("p.db")).await.unwrap());
        store.add_domain("signed.example").await.unwrap();
        store.add_domain("plain.example").await.unwrap();
        store
            .add_dkim_keys("signed.example", &keys::generate_pair("t1").unwrap())
            .await
            .unwrap();
        let directory = Directory::new(Arc::clone(&store));
        let block = |from: &str| format!("From: {from}\r\nSubject: x\r\n\r\n").into_bytes();
        assert!(will_sign(&directory, &block("Ann <ann@signed.example>")).await);
        assert!(!will_sign(&directory, &block("bob@plain.example")).await);
        assert!(!will_sign(&directory, &block("eve@unknown.example")).await);
        // Two From: domains: prepare_submission signs with neither.
        assert!(!will_sign(&directory, &block("ann@signed.example, bob@plain.example")).await);
        assert!(!will_sign(&directory, b"Subject: no from\r\n\r\n").await);
    }
}
