//! DATA (RFC 5321 4.1.1.4) and BDAT (RFC 3030 CHUNKING), and the final
//! `250 queued` after the driver made the message durable.

use super::{Action, Awaiting, BdatSink, EnqueueOutcome, Envelope, Session, State};
use crate::data::{BodyDecoder, BodyError, Feed};
use crate::reply::Reply;

/// Content is handed to the driver in pieces of about this size.
const DATA_BATCH: usize = 64 * 1024;

fn body_error_reply(e: BodyError) -> Reply {
    match e {
        BodyError::TooBig => Reply::message_too_big(),
        BodyError::BareLineEnding => Reply::bare_line_ending_in_data(),
        BodyError::LineTooLong => Reply::text_line_too_long(),
    }
}

impl Session {
    /// Validates that a message may start; `Err` is the refusal.
    fn message_may_start(&self) -> Result<(), Reply> {
        let Some(tx) = &self.tx else {
            return Err(Reply::bad_sequence("Need MAIL command first"));
        };
        if tx.rcpts.is_empty() {
            // RFC 5321 3.3: no valid recipients.
            return Err(Reply {
                code: 554,
                ..Reply::bad_sequence("No valid recipients")
            });
        }
        Ok(())
    }

    fn begin_message(&mut self) {
        let helo = self.helo.clone();
        let auth_user = self.auth_user.clone();
        let tls = self.tls;
        if let Some(tx) = &mut self.tx {
            tx.message_started = true;
            let envelope = Envelope {
                from: tx.from.clone(),
                params: tx.params.clone(),
                recipients: tx.rcpts.clone(),
                helo: helo.as_ref().map(|h| h.name.clone()).unwrap_or_default(),
                esmtp: helo.is_some_and(|h| h.esmtp),
                tls,
                auth_user,
            };
            self.pending.push_back(Action::BeginMessage(envelope));
        }
    }

    pub(super) fn handle_data(&mut self) {
        if let Err(reply) = self.message_may_start() {
            return self.reply(reply);
        }
        if self.tx.as_ref().is_some_and(|t| t.bdat.is_some()) {
            return self.reply(Reply::bad_sequence("DATA not allowed after BDAT"));
        }
        self.begin_message();
        self.pending.push_back(Action::Send(Reply::start_data()));
        self.state = State::Data(BodyDecoder::data(
            self.max_message_size(),
            self.cfg.max_text_line,
        ));
    }

    pub(super) fn step_data(&mut self) -> Option<Action> {
        let State::Data(decoder) = &mut self.state else {
            return None;
        };
        let avail = self.input.available();
        if avail.is_empty() {
            return Some(self.need_input());
        }
        let take = avail.len().min(DATA_BATCH);
        let mut out = Vec::with_capacity(take);
        let feed = decoder.feed(&avail[..take], &mut out);
        let error = decoder.error();
        let consumed = match feed {
            Feed::NeedMore => take,
            Feed::End { consumed } => consumed,
        };
        self.input.consume(consumed);
        if !out.is_empty() {
            self.pending.push_back(Action::MessageData(out));
        }
        if let Feed::End { .. } = feed {
            self.state = State::Command;
            self.finish_message(error);
        }
        None
    }

    /// After the last content byte: queue the message or refuse it.
    fn finish_message(&mut self, error: Option<BodyError>) {
        match error {
            Some(e) => {
                self.reset_transaction();
                self.reply(body_error_reply(e));
            }
            None => {
                self.pending.push_back(Action::EndMessage);
                self.state = State::Await(Awaiting::Enqueue);
            }
        }
    }

    pub(super) fn handle_bdat(&mut self, size: u64, last: bool) {
        let sink = match self.message_may_start() {
            Err(reply) => BdatSink::Discard(reply),
            Ok(()) => {
                let max = self.max_message_size();
                let max_line = self.cfg.max_text_line;
                let first = self.tx.as_ref().is_some_and(|t| t.bdat.is_none());
                if first {
                    self.begin_message();
                }
                if let Some(tx) = &mut self.tx {
                    let decoder = tx
                        .bdat
                        .get_or_insert_with(|| BodyDecoder::chunks(max, max_line));
                    if decoder.size().saturating_add(size) > max {
                        decoder.set_error(BodyError::TooBig);
                    }
                }
                BdatSink::Message
            }
        };
        self.state = State::Bdat {
            remaining: size,
            last,
            sink,
        };
    }

    pub(super) fn step_bdat(&mut self) -> Option<Action> {
        let State::Bdat { remaining, .. } = &mut self.state else {
            return None;
        };
        if *remaining > 0 {
            let avail = self.input.available();
            if avail.is_empty() {
                return Some(self.need_input());
            }
            let take = avail
                .len()
                .min(DATA_BATCH)
                .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
            *remaining -= take as u64;
            let chunk = avail[..take].to_vec();
            self.input.consume(take);
            if let (
                State::Bdat {
                    sink: BdatSink::Message,
                    ..
                },
                Some(tx),
            ) = (&self.state, &mut self.tx)
                && let Some(decoder) = &mut tx.bdat
            {
                let mut out = Vec::with_capacity(take);
                decoder.feed(&chunk, &mut out);
                if !out.is_empty() && decoder.error().is_none() {
                    self.pending.push_back(Action::MessageData(out));
                }
            }
            return None;
        }
        let State::Bdat { last, sink, .. } = std::mem::replace(&mut self.state, State::Command)
        else {
            return None;
        };
        self.finish_chunk(last, sink);
        None
    }

    fn finish_chunk(&mut self, last: bool, sink: BdatSink) {
        if let BdatSink::Discard(reply) = sink {
            return self.reply(reply);
        }
        let Some(decoder) = self.tx.as_mut().and_then(|t| t.bdat.as_mut()) else {
            return self.reply(Reply::internal_error());
        };
        if let Some(e) = decoder.error() {
            // RFC 3030 2: a failed chunk fails the transaction.
            return self.finish_message(Some(e));
        }
        if !last {
            let size = decoder.size();
            return self.reply(Reply::chunk_received(size));
        }
        // Content must end with CRLF for later relay with DATA.
        let mut tail = Vec::new();
        decoder.finish_chunks(&mut tail);
        if let Some(e) = decoder.error() {
            return self.finish_message(Some(e));
        }
        if !tail.is_empty() {
            self.pending.push_back(Action::MessageData(tail));
        }
        self.finish_message(None);
    }

    /// Result of `Action::EndMessage`.
    pub fn message_result(&mut self, outcome: EnqueueOutcome) {
        if !matches!(self.state, State::Await(Awaiting::Enqueue)) {
            return;
        }
        self.state = State::Command;
        if let Some(tx) = &mut self.tx {
            tx.message_started = false;
        }
        match outcome {
            // The driver made the plan reservations durable with the message.
            EnqueueOutcome::Queued { .. } => self.tx = None,
            _ => self.reset_transaction(),
        }
        self.reply(match outcome {
            EnqueueOutcome::Queued { id } => Reply::queued(&id),
            EnqueueOutcome::TemporaryFailure => Reply::internal_error(),
            EnqueueOutcome::InsufficientStorage => Reply::insufficient_storage(),
            EnqueueOutcome::Refused(reply) => reply,
        });
    }
}
