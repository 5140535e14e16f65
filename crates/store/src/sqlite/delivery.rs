//! The delivery part of the SQLite backend (schema version 5): claiming due
//! recipients, recording attempts and DSNs, queue administration, aliases.
//!
//! Owns the SQL of those trait methods; `sqlite.rs` forwards to them.

use std::collections::BTreeMap;

use sqlx::{QueryBuilder, Sqlite};

use super::{SqliteStore, insert_error, insert_message, now, recipient_domain, unavailable};
use crate::validate::{
    normalize, normalize_address, normalize_domain, normalize_new_message, truncate_chars,
};
use crate::{
    Alias, DeliveryEvent, DeliveryJob, DeliveryRecipient, DeliveryStatus, NewMessage, QueueEntry,
    RecipientOutcome, Result, StoreError,
};

/// Longest kept reply text, in characters.
const MAX_REPLY_CHARS: usize = 2000;

/// Statuses that the queue manager may claim.
const PENDING: &str = "('queued', 'deferred')";

type RecipientRow = (
    String,         // message_id
    i64,            // position
    String,         // address
    String,         // domain
    String,         // status
    i64,            // attempts
    i64,            // next_attempt_ms
    Option<String>, // last_reply
    Option<String>, // last_host
    i64,            // warned
    i64,            // admin_bounce
);

const RECIPIENT_COLUMNS: &str = "message_id, position, address, domain, status, attempts, \
     next_attempt_ms, last_reply, last_host, warned, admin_bounce";

type MessageRow = (
    String,         // id
    String,         // sender
    i64,            // size
    String,         // spool_path
    Option<String>, // auth_user
    String,         // client_ip
    i64,            // received_at
    Option<i64>,    // done_at
);

const MESSAGE_COLUMNS: &str =
    "id, sender, size, spool_path, auth_user, client_ip, received_at, done_at";

fn parse_delivery_status(text: &str) -> Result<DeliveryStatus> {
    DeliveryStatus::parse(text).ok_or_else(|| {
        StoreError::Unavailable("queue_recipients holds an unknown status value".into())
    })
}

fn recipient_from_row(row: RecipientRow) -> Result<(String, DeliveryRecipient)> {
    let (message_id, position, address, domain, status, attempts, next, reply, host, warned, ab) =
        row;
    Ok((
        message_id,
        DeliveryRecipient {
            position,
            address,
            domain,
            status: parse_delivery_status(&status)?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            next_attempt_ms: next,
            last_reply: reply,
            last_host: host,
            warned: warned != 0,
            admin_bounce: ab != 0,
        },
    ))
}

fn entry_from_row(row: MessageRow) -> Result<QueueEntry> {
    let (id, sender, size, spool_path, auth_user, client_ip, received_at, done_at) = row;
    let size = u64::try_from(size)
        .map_err(|_| StoreError::Unavailable("queue_messages holds a negative size".into()))?;
    Ok(QueueEntry {
        id,
        sender,
        size,
        spool_path,
        auth_user,
        client_ip,
        received_at,
        done_at,
        recipients: Vec::new(),
    })
}

/// An alias key: `local@domain` or `@domain`, lowercase, on a valid domain.
fn normalize_alias(input: &str) -> Result<(String, String)> {
    let text = normalize(input);
    if let Some(domain) = text.strip_prefix('@') {
        let domain = normalize_domain(domain)?;
        return Ok((format!("@{domain}"), domain));
    }
    let address = normalize_address(&text)?;
    let domain = address
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    let domain = normalize_domain(&domain)?;
    Ok((address, domain))
}

impl SqliteStore {
    pub(super) async fn release_in_flight_impl(&self) -> Result<u64> {
        let done =
            sqlx::query("UPDATE queue_recipients SET status = 'queued' WHERE status = 'inflight'")
                .execute(&self.pool)
                .await
                .map_err(|e| unavailable("release_in_flight", e))?;
        Ok(done.rows_affected())
    }

    pub(super) async fn claim_due_impl(&self, now_ms: i64, limit: u32) -> Result<Vec<DeliveryJob>> {
        let mut tx = self.begin_write("claim_due").await?;
        let sql = format!(
            "UPDATE queue_recipients SET status = 'inflight' \
             WHERE rowid IN (SELECT rowid FROM queue_recipients \
                             WHERE status IN {PENDING} AND next_attempt_ms <= ? \
                             ORDER BY next_attempt_ms LIMIT ?) \
             RETURNING {RECIPIENT_COLUMNS}"
        );
        let rows: Vec<RecipientRow> = sqlx::query_as(&sql)
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| unavailable("claim_due", e))?;
        if rows.is_empty() {
            tx.commit()
                .await
                .map_err(|e| unavailable("claim_due: commit", e))?;
            return Ok(Vec::new());
        }
        // Group by (message, domain), recipients in RCPT order.
        let mut groups: BTreeMap<(String, String), Vec<DeliveryRecipient>> = BTreeMap::new();
        for row in rows {
            let (message_id, recipient) = recipient_from_row(row)?;
            groups
                .entry((message_id, recipient.domain.clone()))
                .or_default()
                .push(recipient);
        }
        let mut ids: Vec<&String> = groups.keys().map(|(id, _)| id).collect();
        ids.dedup();
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {MESSAGE_COLUMNS} FROM queue_messages WHERE id IN ("
        ));
        let mut sep = q.separated(", ");
        for id in &ids {
            sep.push_bind(*id);
        }
        q.push(")");
        let messages: Vec<MessageRow> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| unavailable("claim_due: messages", e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable("claim_due: commit", e))?;
        let mut by_id: BTreeMap<String, QueueEntry> = BTreeMap::new();
        for row in messages {
            let entry = entry_from_row(row)?;
            by_id.insert(entry.id.clone(), entry);
        }
        let mut jobs = Vec::new();
        for ((message_id, domain), mut recipients) in groups {
            let Some(m) = by_id.get(&message_id) else {
                continue;
            };
            recipients.sort_by_key(|r| r.position);
            jobs.push(DeliveryJob {
                message_id,
                sender: m.sender.clone(),
                spool_path: m.spool_path.clone(),
                size: m.size,
                received_at: m.received_at,
                auth_user: m.auth_user.clone(),
                domain,
                recipients,
            });
        }
        Ok(jobs)
    }

    pub(super) async fn next_due_ms_impl(&self) -> Result<Option<i64>> {
        let sql =
            format!("SELECT min(next_attempt_ms) FROM queue_recipients WHERE status IN {PENDING}");
        sqlx::query_scalar(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| unavailable("next_due_ms", e))
    }

    pub(super) async fn record_delivery_impl(
        &self,
        outcomes: &[RecipientOutcome],
        notices: &[NewMessage],
        now_ms: i64,
    ) -> Result<Vec<(String, String)>> {
        let notices = notices
            .iter()
            .map(normalize_new_message)
            .collect::<Result<Vec<_>>>()?;
        let mut tx = self.begin_write("record_delivery").await?;
        let mut touched: Vec<&str> = Vec::new();
        for o in outcomes {
            let reply = truncate_chars(&o.reply, MAX_REPLY_CHARS);
            let counted = i64::from(o.status != DeliveryStatus::Queued);
            let (address, outcome): (Option<String>, &str) = match (&o.new_address, o.status) {
                (Some(a), _) => (Some(a.clone()), "expanded"),
                (None, DeliveryStatus::Queued) => (None, "released"),
                (None, s) => (None, s.as_str()),
            };
            let row: Option<(String,)> = sqlx::query_as(
                "UPDATE queue_recipients SET status = ?, attempts = attempts + ?, \
                 next_attempt_ms = CASE WHEN admin_bounce = 1 THEN min(?, ?) ELSE ? END, \
                 last_reply = ?, last_host = ?, \
                 warned = max(warned, ?), \
                 address = coalesce(?, address), domain = coalesce(?, domain), \
                 admin_bounce = CASE WHEN ? IS NULL THEN admin_bounce ELSE 0 END \
                 WHERE message_id = ? AND position = ? RETURNING address",
            )
            .bind(o.status.as_str())
            .bind(if o.new_address.is_some() { 1 } else { counted })
            // A bounce requested while the attempt was under way is due now.
            .bind(o.next_attempt_ms)
            .bind(now_ms)
            .bind(o.next_attempt_ms)
            .bind(&reply)
            .bind(&o.host)
            .bind(i64::from(o.warned))
            .bind(&address)
            .bind(address.as_deref().map(recipient_domain))
            .bind(&address)
            .bind(&o.message_id)
            .bind(o.position)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| unavailable("record_delivery: recipient", e))?;
            let Some((recipient,)) = row else {
                // Deleted by an admin meanwhile: nothing to record.
                continue;
            };
            sqlx::query(
                "INSERT INTO delivery_events (message_id, recipient, at_ms, outcome, host, reply) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&o.message_id)
            .bind(&recipient)
            .bind(now_ms)
            .bind(outcome)
            .bind(&o.host)
            .bind(&reply)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable("record_delivery: event", e))?;
            if !touched.contains(&o.message_id.as_str()) {
                touched.push(&o.message_id);
            }
        }
        for notice in &notices {
            insert_message(&mut tx, notice).await?;
        }
        let mut finished = Vec::new();
        for id in touched {
            let row: Option<(String,)> = sqlx::query_as(
                "UPDATE queue_messages SET done_at = ? \
                 WHERE id = ? AND done_at IS NULL AND NOT EXISTS ( \
                     SELECT 1 FROM queue_recipients \
                     WHERE message_id = ? AND status NOT IN ('delivered', 'bounced')) \
                 RETURNING spool_path",
            )
            .bind(now_ms / 1000)
            .bind(id)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| unavailable("record_delivery: done", e))?;
            if let Some((path,)) = row {
                finished.push((id.to_owned(), path));
            }
        }
        tx.commit()
            .await
            .map_err(|e| unavailable("record_delivery: commit", e))?;
        Ok(finished)
    }

    async fn recipients_of(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, Vec<DeliveryRecipient>>> {
        let mut map: BTreeMap<String, Vec<DeliveryRecipient>> = BTreeMap::new();
        for chunk in ids.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {RECIPIENT_COLUMNS} FROM queue_recipients WHERE message_id IN ("
            ));
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            q.push(") ORDER BY message_id, position");
            let rows: Vec<RecipientRow> = q
                .build_query_as()
                .fetch_all(&self.pool)
                .await
                .map_err(|e| unavailable("queue: recipients", e))?;
            for row in rows {
                let (id, r) = recipient_from_row(row)?;
                map.entry(id).or_default().push(r);
            }
        }
        Ok(map)
    }

    pub(super) async fn queue_entries_impl(
        &self,
        status: Option<DeliveryStatus>,
        include_done: bool,
    ) -> Result<Vec<QueueEntry>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {MESSAGE_COLUMNS} FROM queue_messages AS m WHERE 1 = 1"
        ));
        if !include_done {
            q.push(" AND done_at IS NULL");
        }
        if let Some(status) = status {
            q.push(" AND EXISTS (SELECT 1 FROM queue_recipients AS r WHERE r.message_id = m.id AND r.status = ");
            q.push_bind(status.as_str());
            q.push(")");
        }
        q.push(" ORDER BY received_at, rowid");
        let rows: Vec<MessageRow> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| unavailable("queue_entries", e))?;
        let mut entries = rows
            .into_iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>>>()?;
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let mut recipients = self.recipients_of(&ids).await?;
        for e in &mut entries {
            e.recipients = recipients.remove(&e.id).unwrap_or_default();
        }
        Ok(entries)
    }

    pub(super) async fn queue_entry_impl(&self, id: &str) -> Result<Option<QueueEntry>> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM queue_messages WHERE id = ?");
        let row: Option<MessageRow> = sqlx::query_as(&sql)
            .bind(id.trim())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| unavailable("queue_entry", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut entry = entry_from_row(row)?;
        let mut recipients = self.recipients_of(std::slice::from_ref(&entry.id)).await?;
        entry.recipients = recipients.remove(&entry.id).unwrap_or_default();
        Ok(Some(entry))
    }

    pub(super) async fn delivery_events_impl(&self, id: &str) -> Result<Vec<DeliveryEvent>> {
        let rows: Vec<(String, String, i64, String, Option<String>, String)> = sqlx::query_as(
            "SELECT message_id, recipient, at_ms, outcome, host, reply FROM delivery_events \
             WHERE message_id = ? ORDER BY at_ms, id",
        )
        .bind(id.trim())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| unavailable("delivery_events", e))?;
        Ok(rows
            .into_iter()
            .map(
                |(message_id, recipient, at_ms, outcome, host, reply)| DeliveryEvent {
                    message_id,
                    recipient,
                    at_ms,
                    outcome,
                    host,
                    reply,
                },
            )
            .collect())
    }

    async fn message_exists(&self, id: &str) -> Result<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM queue_messages WHERE id = ?)")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| unavailable("queue: lookup", e))
    }

    pub(super) async fn retry_now_impl(&self, id: Option<&str>, now_ms: i64) -> Result<u64> {
        let done = match id {
            Some(id) => {
                let id = id.trim();
                if !self.message_exists(id).await? {
                    return Err(StoreError::NotFound(id.to_owned()));
                }
                let sql = format!(
                    "UPDATE queue_recipients SET next_attempt_ms = ? \
                     WHERE message_id = ? AND status IN {PENDING}"
                );
                sqlx::query(&sql)
                    .bind(now_ms)
                    .bind(id)
                    .execute(&self.pool)
                    .await
            }
            None => {
                let sql = format!(
                    "UPDATE queue_recipients SET next_attempt_ms = ? WHERE status IN {PENDING}"
                );
                sqlx::query(&sql).bind(now_ms).execute(&self.pool).await
            }
        }
        .map_err(|e| unavailable("retry_now", e))?;
        Ok(done.rows_affected())
    }

    pub(super) async fn request_bounce_impl(&self, id: &str, now_ms: i64) -> Result<u64> {
        let id = id.trim();
        if !self.message_exists(id).await? {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        let done = sqlx::query(
            "UPDATE queue_recipients SET admin_bounce = 1, \
             next_attempt_ms = CASE WHEN status = 'inflight' THEN next_attempt_ms ELSE ? END \
             WHERE message_id = ? AND status NOT IN ('delivered', 'bounced')",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|e| unavailable("request_bounce", e))?;
        Ok(done.rows_affected())
    }

    pub(super) async fn delete_message_impl(&self, id: &str) -> Result<String> {
        let id = id.trim();
        let mut tx = self.begin_write("delete_message").await?;
        let row: Option<(String,)> =
            sqlx::query_as("DELETE FROM queue_messages WHERE id = ? RETURNING spool_path")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| unavailable("delete_message", e))?;
        let Some((path,)) = row else {
            return Err(StoreError::NotFound(id.to_owned()));
        };
        sqlx::query("DELETE FROM delivery_events WHERE message_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable("delete_message: events", e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable("delete_message: commit", e))?;
        Ok(path)
    }

    pub(super) async fn prune_done_impl(&self, before_s: i64) -> Result<u64> {
        let mut tx = self.begin_write("prune_done").await?;
        sqlx::query(
            "DELETE FROM delivery_events WHERE message_id IN \
             (SELECT id FROM queue_messages WHERE done_at IS NOT NULL AND done_at < ?)",
        )
        .bind(before_s)
        .execute(&mut *tx)
        .await
        .map_err(|e| unavailable("prune_done: events", e))?;
        let done =
            sqlx::query("DELETE FROM queue_messages WHERE done_at IS NOT NULL AND done_at < ?")
                .bind(before_s)
                .execute(&mut *tx)
                .await
                .map_err(|e| unavailable("prune_done", e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable("prune_done: commit", e))?;
        Ok(done.rows_affected())
    }

    pub(super) async fn live_spool_files_impl(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT CASE WHEN instr(spool_path, '#') > 0 \
                 THEN substr(spool_path, 1, instr(spool_path, '#') - 1) \
                 ELSE spool_path END \
             FROM queue_messages WHERE done_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| unavailable("live_spool_files", e))?;
        Ok(rows.into_iter().map(|(path,)| path).collect())
    }

    pub(super) async fn add_alias_impl(&self, alias: &str, target: &str) -> Result<()> {
        let (alias, domain) = normalize_alias(alias)?;
        let target = normalize_address(target)
            .map_err(|e| StoreError::Invalid(format!("alias target: {e}")))?;
        if target == alias {
            return Err(StoreError::Invalid(format!(
                "alias {alias} cannot point to itself"
            )));
        }
        let mut tx = self.begin_write("add_alias").await?;
        let local: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM domains WHERE name = ?)")
                .bind(&domain)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| unavailable("add_alias: domain", e))?;
        if !local {
            return Err(StoreError::Invalid(format!(
                "alias {alias}: {domain} is not a local domain (add it with `portcullis domain add`)"
            )));
        }
        sqlx::query("INSERT INTO aliases (alias, target, created_at) VALUES (?, ?, ?)")
            .bind(&alias)
            .bind(&target)
            .bind(now())
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error("add_alias", &alias, e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable("add_alias: commit", e))
    }

    pub(super) async fn remove_alias_impl(&self, alias: &str) -> Result<()> {
        let (alias, _) = normalize_alias(alias)?;
        let done = sqlx::query("DELETE FROM aliases WHERE alias = ?")
            .bind(&alias)
            .execute(&self.pool)
            .await
            .map_err(|e| unavailable("remove_alias", e))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(alias));
        }
        Ok(())
    }

    pub(super) async fn list_aliases_impl(&self) -> Result<Vec<Alias>> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT alias, target, created_at FROM aliases ORDER BY alias")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| unavailable("list_aliases", e))?;
        Ok(rows
            .into_iter()
            .map(|(alias, target, created_at)| Alias {
                alias,
                target,
                created_at,
            })
            .collect())
    }

    pub(super) async fn resolve_alias_impl(&self, address: &str) -> Result<Option<String>> {
        let Ok(address) = normalize_address(address) else {
            return Ok(None);
        };
        let catch_all = format!("@{}", recipient_domain(&address));
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT target FROM aliases WHERE alias IN (?, ?) \
             ORDER BY CASE WHEN alias = ? THEN 0 ELSE 1 END LIMIT 1",
        )
        .bind(&address)
        .bind(&catch_all)
        .bind(&address)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| unavailable("resolve_alias", e))?;
        Ok(row.map(|(t,)| t))
    }
}
