//! The sending-domain part of the SQLite backend (issue 7): DKIM key pairs
//! and their rotation states.
//!
//! Owns the SQL of those trait methods; `sqlite.rs` forwards to them. Private
//! keys pass through here as opaque bytes and are never logged.

use super::{SqliteStore, insert_error, now, unavailable};
use crate::validate::normalize_domain;
use crate::{DkimAlgorithm, DkimKey, DkimKeyState, NewDkimKey, Result, StoreError};

type KeyRow = (
    String,
    String,
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    String,
    i64,
);

/// A selector is one DNS label: letters, digits and hyphens, at most 63.
fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn key_from_row(row: KeyRow) -> Result<DkimKey> {
    let (domain, selector, tag, algorithm, private_key, public_key, state, created_at) = row;
    let corrupt =
        |what: &str| StoreError::Unavailable(format!("dkim_keys holds an unknown {what}"));
    Ok(DkimKey {
        domain,
        selector,
        tag,
        algorithm: DkimAlgorithm::parse(&algorithm).ok_or_else(|| corrupt("algorithm"))?,
        private_key,
        public_key,
        state: DkimKeyState::parse(&state).ok_or_else(|| corrupt("state"))?,
        created_at,
    })
}

impl SqliteStore {
    pub(super) async fn add_dkim_keys_impl(
        &self,
        domain: &str,
        keys: &[NewDkimKey],
    ) -> Result<DkimKeyState> {
        let domain = normalize_domain(domain)?;
        let Some(first) = keys.first() else {
            return Err(StoreError::Invalid("no DKIM keys given".into()));
        };
        for key in keys {
            if key.tag != first.tag {
                return Err(StoreError::Invalid(
                    "DKIM keys of one pair share a tag".into(),
                ));
            }
            if !valid_label(&key.selector) || !valid_label(&key.tag) {
                return Err(StoreError::Invalid(format!(
                    "DKIM selector {:?} is not a DNS label",
                    key.selector
                )));
            }
        }
        let mut tx = self.begin_write("add_dkim_keys").await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM domains WHERE name = ?)")
                .bind(&domain)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| unavailable("add_dkim_keys", e))?;
        if !exists {
            return Err(StoreError::NotFound(domain));
        }
        let has_active: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM dkim_keys WHERE domain = ? AND state = 'active')",
        )
        .bind(&domain)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| unavailable("add_dkim_keys", e))?;
        let state = if has_active {
            DkimKeyState::Pending
        } else {
            DkimKeyState::Active
        };
        let created_at = now();
        for key in keys {
            sqlx::query(
                "INSERT INTO dkim_keys (domain, selector, tag, algorithm, private_key, \
                 public_key, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&domain)
            .bind(&key.selector)
            .bind(&key.tag)
            .bind(key.algorithm.as_str())
            .bind(&key.private_key)
            .bind(&key.public_key)
            .bind(state.as_str())
            .bind(created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error("add_dkim_keys", &key.selector, e))?;
        }
        tx.commit()
            .await
            .map_err(|e| unavailable("add_dkim_keys: commit", e))?;
        Ok(state)
    }

    pub(super) async fn dkim_keys_impl(&self, domain: &str) -> Result<Vec<DkimKey>> {
        let Ok(domain) = normalize_domain(domain) else {
            return Ok(Vec::new());
        };
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT domain, selector, tag, algorithm, private_key, public_key, state, created_at \
             FROM dkim_keys WHERE domain = ? ORDER BY tag, selector",
        )
        .bind(&domain)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| unavailable("dkim_keys", e))?;
        rows.into_iter().map(key_from_row).collect()
    }

    pub(super) async fn activate_dkim_tag_impl(&self, domain: &str, tag: &str) -> Result<()> {
        let domain = normalize_domain(domain)?;
        let mut tx = self.begin_write("activate_dkim_tag").await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM dkim_keys WHERE domain = ? AND tag = ?)",
        )
        .bind(&domain)
        .bind(tag)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| unavailable("activate_dkim_tag", e))?;
        if !exists {
            return Err(StoreError::NotFound(tag.to_owned()));
        }
        sqlx::query(
            "UPDATE dkim_keys SET state = 'retired' \
             WHERE domain = ? AND state = 'active' AND tag <> ?",
        )
        .bind(&domain)
        .bind(tag)
        .execute(&mut *tx)
        .await
        .map_err(|e| unavailable("activate_dkim_tag", e))?;
        sqlx::query("UPDATE dkim_keys SET state = 'active' WHERE domain = ? AND tag = ?")
            .bind(&domain)
            .bind(tag)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable("activate_dkim_tag", e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable("activate_dkim_tag: commit", e))
    }

    pub(super) async fn remove_dkim_tag_impl(&self, domain: &str, tag: &str) -> Result<()> {
        let domain = normalize_domain(domain)?;
        let mut tx = self.begin_write("remove_dkim_tag").await?;
        let states: Vec<String> =
            sqlx::query_scalar("SELECT state FROM dkim_keys WHERE domain = ? AND tag = ?")
                .bind(&domain)
                .bind(tag)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| unavailable("remove_dkim_tag", e))?;
        if states.is_empty() {
            return Err(StoreError::NotFound(tag.to_owned()));
        }
        if states.iter().any(|s| s == "active") {
            return Err(StoreError::Invalid(format!(
                "{tag} is the active DKIM key pair; activate another pair first"
            )));
        }
        sqlx::query("DELETE FROM dkim_keys WHERE domain = ? AND tag = ?")
            .bind(&domain)
            .bind(tag)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable("remove_dkim_tag", e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable("remove_dkim_tag: commit", e))
    }
}
