//! The account-security part of the SQLite backend (schema version 3): app
//! passwords, TOTP secrets, IP allowlists, granted senders, the auth audit
//! and bans.
//!
//! Owns the SQL of those trait methods; `sqlite.rs` forwards to them. IP
//! allowlists are stored as newline-separated text, which is unambiguous
//! because [`crate::validate::check_network_text`] refuses whitespace and
//! control characters in entries.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::{SqliteStore, insert_error, now, unavailable};
use crate::validate::{
    MAX_AUTH_TEXT_CHARS, check_app_password_digest, check_ban_reason, check_network_text,
    check_totp_secret, normalize, normalize_address, normalize_app_password_name,
    normalize_cidr_list, normalize_network, normalize_sender, truncate_chars,
};
use crate::{
    AccountSecurity, AppPassword, AppPasswordSecret, AuthEvent, AuthEventFilter, Ban, Result,
    StoreError,
};

/// Separates the entries of a stored allowlist.
const LIST_SEPARATOR: &str = "\n";

fn join_list(list: &[String]) -> String {
    list.join(LIST_SEPARATOR)
}

fn split_list(text: &str) -> Vec<String> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split(LIST_SEPARATOR).map(str::to_owned).collect()
    }
}

async fn account_exists(conn: &mut SqliteConnection, address: &str, what: &str) -> Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE address = ?)")
        .bind(address)
        .fetch_one(conn)
        .await
        .map_err(|e| unavailable(what, e))
}

type AppPasswordRow = (
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    String,
);

type AuthEventRow = (
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    bool,
    String,
);

type BanRow = (String, i64, String, i64, i64);

fn ban_from_row((network, until_ms, reason, created_ms, strikes): BanRow) -> Result<Ban> {
    let strikes = u32::try_from(strikes)
        .map_err(|_| StoreError::Unavailable("bans table holds an invalid strike count".into()))?;
    Ok(Ban {
        network,
        until_ms,
        reason,
        created_ms,
        strikes,
    })
}

/// Rows in one `INSERT INTO auth_events` statement.
const AUTH_EVENTS_PER_INSERT: usize = 100;

fn cut(text: &str) -> String {
    truncate_chars(text, MAX_AUTH_TEXT_CHARS)
}

impl SqliteStore {
    pub(super) async fn add_app_password_impl(
        &self,
        account: &str,
        name: &str,
        digest: &[u8],
        expires_at: Option<i64>,
        allowed_ips: &[String],
    ) -> Result<()> {
        let account = normalize_address(account)?;
        let name = normalize_app_password_name(name)?;
        check_app_password_digest(digest)?;
        let allowed_ips = normalize_cidr_list(allowed_ips)?;
        let mut tx = self.begin_write("add_app_password").await?;
        if !account_exists(&mut tx, &account, "add_app_password").await? {
            return Err(StoreError::NotFound(account));
        }
        sqlx::query(
            "INSERT INTO app_passwords \
             (account, name, digest, created_at, expires_at, allowed_ips) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&account)
        .bind(&name)
        .bind(digest)
        .bind(now())
        .bind(expires_at)
        .bind(join_list(&allowed_ips))
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error("add_app_password", &name, e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable("add_app_password: commit", e))
    }

    pub(super) async fn list_app_passwords_impl(&self, account: &str) -> Result<Vec<AppPassword>> {
        let Ok(account) = normalize_address(account) else {
            return Ok(Vec::new());
        };
        let rows: Vec<AppPasswordRow> = sqlx::query_as(
            "SELECT account, name, created_at, last_used_at, last_used_ip, expires_at, \
                    allowed_ips \
             FROM app_passwords WHERE account = ? ORDER BY name",
        )
        .bind(&account)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| unavailable("list_app_passwords", e))?;
        Ok(rows
            .into_iter()
            .map(
                |(account, name, created_at, last_used_at, last_used_ip, expires_at, ips)| {
                    AppPassword {
                        account,
                        name,
                        created_at,
                        last_used_at,
                        last_used_ip,
                        expires_at,
                        allowed_ips: split_list(&ips),
                    }
                },
            )
            .collect())
    }

    pub(super) async fn revoke_app_password_impl(&self, account: &str, name: &str) -> Result<()> {
        let account = normalize_address(account)?;
        let name = normalize_app_password_name(name)?;
        let mut tx = self.begin_write("revoke_app_password").await?;
        let done = sqlx::query("DELETE FROM app_passwords WHERE account = ? AND name = ?")
            .bind(&account)
            .bind(&name)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable("revoke_app_password", e))?;
        if done.rows_affected() == 0 {
            if !account_exists(&mut tx, &account, "revoke_app_password").await? {
                return Err(StoreError::NotFound(account));
            }
            return Err(StoreError::NotFound(name));
        }
        tx.commit()
            .await
            .map_err(|e| unavailable("revoke_app_password: commit", e))
    }

    pub(super) async fn app_password_secrets_impl(
        &self,
        account: &str,
    ) -> Result<Vec<AppPasswordSecret>> {
        let Ok(account) = normalize_address(account) else {
            return Ok(Vec::new());
        };
        let rows: Vec<(String, Vec<u8>, Option<i64>, String)> = sqlx::query_as(
            "SELECT name, digest, expires_at, allowed_ips \
             FROM app_passwords WHERE account = ? ORDER BY name",
        )
        .bind(&account)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| unavailable("app_password_secrets", e))?;
        Ok(rows
            .into_iter()
            .map(|(name, digest, expires_at, ips)| AppPasswordSecret {
                name,
                digest,
                expires_at,
                allowed_ips: split_list(&ips),
            })
            .collect())
    }

    pub(super) async fn touch_app_password_impl(
        &self,
        account: &str,
        name: &str,
        at: i64,
        ip: &str,
    ) -> Result<()> {
        let account = normalize_address(account)?;
        let name = normalize_app_password_name(name)?;
        let ip = check_network_text(ip, "client IP")?;
        let done = sqlx::query(
            "UPDATE app_passwords SET last_used_at = ?, last_used_ip = ? \
             WHERE account = ? AND name = ?",
        )
        .bind(at)
        .bind(&ip)
        .bind(&account)
        .bind(&name)
        .execute(&self.pool)
        .await
        .map_err(|e| unavailable("touch_app_password", e))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(name));
        }
        Ok(())
    }

    pub(super) async fn account_security_impl(
        &self,
        account: &str,
    ) -> Result<Option<AccountSecurity>> {
        let Ok(account) = normalize_address(account) else {
            return Ok(None);
        };
        // One read transaction, so one consistent snapshot of both tables.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| unavailable("account_security", e))?;
        let row: Option<(Option<String>, String, i64)> = sqlx::query_as(
            "SELECT totp_secret, allowed_ips, password_changed_at FROM accounts WHERE address = ?",
        )
        .bind(&account)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| unavailable("account_security", e))?;
        let Some((totp_secret, ips, password_changed_at)) = row else {
            return Ok(None);
        };
        let allowed_senders: Vec<String> = sqlx::query_scalar(
            "SELECT sender FROM account_senders WHERE account = ? ORDER BY sender",
        )
        .bind(&account)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| unavailable("account_security: senders", e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable("account_security: end", e))?;
        Ok(Some(AccountSecurity {
            totp_secret,
            allowed_ips: split_list(&ips),
            allowed_senders,
            password_changed_at,
        }))
    }

    pub(super) async fn set_totp_secret_impl(
        &self,
        account: &str,
        secret: Option<&str>,
    ) -> Result<()> {
        let account = normalize_address(account)?;
        let secret = secret.map(check_totp_secret).transpose()?;
        self.update_account_column("set_totp_secret", "totp_secret", secret, account)
            .await
    }

    pub(super) async fn set_allowed_ips_impl(&self, account: &str, cidrs: &[String]) -> Result<()> {
        let account = normalize_address(account)?;
        let cidrs = normalize_cidr_list(cidrs)?;
        self.update_account_column("set_allowed_ips", "allowed_ips", join_list(&cidrs), account)
            .await
    }

    pub(super) async fn add_allowed_sender_impl(&self, account: &str, sender: &str) -> Result<()> {
        let account = normalize_address(account)?;
        let sender = normalize_sender(sender)?;
        let mut tx = self.begin_write("add_allowed_sender").await?;
        if !account_exists(&mut tx, &account, "add_allowed_sender").await? {
            return Err(StoreError::NotFound(account));
        }
        sqlx::query("INSERT INTO account_senders (account, sender) VALUES (?, ?)")
            .bind(&account)
            .bind(&sender)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error("add_allowed_sender", &sender, e))?;
        tx.commit()
            .await
            .map_err(|e| unavailable("add_allowed_sender: commit", e))
    }

    pub(super) async fn remove_allowed_sender_impl(
        &self,
        account: &str,
        sender: &str,
    ) -> Result<()> {
        let account = normalize_address(account)?;
        let sender = normalize_sender(sender)?;
        let mut tx = self.begin_write("remove_allowed_sender").await?;
        let done = sqlx::query("DELETE FROM account_senders WHERE account = ? AND sender = ?")
            .bind(&account)
            .bind(&sender)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable("remove_allowed_sender", e))?;
        if done.rows_affected() == 0 {
            if !account_exists(&mut tx, &account, "remove_allowed_sender").await? {
                return Err(StoreError::NotFound(account));
            }
            return Err(StoreError::NotFound(sender));
        }
        tx.commit()
            .await
            .map_err(|e| unavailable("remove_allowed_sender: commit", e))
    }

    pub(super) async fn record_auth_events_impl(&self, events: &[AuthEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write("record_auth_events").await?;
        // One multi-row INSERT per chunk: each statement is a round trip to
        // the connection's worker thread (two thread wake-ups), so a batch
        // of 100 events was 100 trips (issue 9). 10 parameters a row, well
        // under SQLite's limit of 32,766 per statement.
        for chunk in events.chunks(AUTH_EVENTS_PER_INSERT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO auth_events \
                 (at_ms, session_id, listener, client_ip, tls, claimed_user, mechanism, \
                  credential, success, reason) ",
            );
            insert.push_values(chunk, |mut row, event| {
                row.push_bind(event.at_ms)
                    .push_bind(cut(&event.session_id))
                    .push_bind(cut(&event.listener))
                    .push_bind(cut(&event.client_ip))
                    .push_bind(event.tls.as_deref().map(cut))
                    .push_bind(cut(&event.user))
                    .push_bind(cut(&event.mechanism))
                    .push_bind(event.credential.as_deref().map(cut))
                    .push_bind(event.success)
                    .push_bind(cut(&event.reason));
            });
            insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(|e| unavailable("record_auth_events", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| unavailable("record_auth_events: commit", e))
    }

    pub(super) async fn auth_events_impl(
        &self,
        filter: &AuthEventFilter,
    ) -> Result<Vec<AuthEvent>> {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT at_ms, session_id, listener, client_ip, tls, claimed_user, mechanism, \
                    credential, success, reason \
             FROM auth_events WHERE 1 = 1",
        );
        if let Some(user) = &filter.user {
            // SQLite's lower() folds ASCII only, like `normalize`.
            query
                .push(" AND lower(claimed_user) = ")
                .push_bind(normalize(user));
        }
        if let Some(ip) = &filter.ip {
            query
                .push(" AND client_ip = ")
                .push_bind(ip.trim().to_owned());
        }
        if filter.failed_only {
            query.push(" AND success = 0");
        }
        if let Some(since_ms) = filter.since_ms {
            query.push(" AND at_ms >= ").push_bind(since_ms);
        }
        query.push(" ORDER BY at_ms DESC, id DESC");
        if let Some(limit) = filter.limit {
            query
                .push(" LIMIT ")
                .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let rows: Vec<AuthEventRow> = query
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| unavailable("auth_events", e))?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    at_ms,
                    session_id,
                    listener,
                    client_ip,
                    tls,
                    user,
                    mechanism,
                    credential,
                    success,
                    reason,
                )| AuthEvent {
                    at_ms,
                    session_id,
                    listener,
                    client_ip,
                    tls,
                    user,
                    mechanism,
                    credential,
                    success,
                    reason,
                },
            )
            .collect())
    }

    pub(super) async fn prune_auth_events_impl(&self, before_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM auth_events WHERE at_ms <= ?")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(|e| unavailable("prune_auth_events", e))?;
        Ok(done.rows_affected())
    }

    pub(super) async fn upsert_ban_impl(&self, ban: &Ban) -> Result<()> {
        let network = normalize_network(&ban.network)?;
        let reason = check_ban_reason(&ban.reason)?;
        sqlx::query(
            "INSERT INTO bans (network, until_ms, reason, created_ms, strikes) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (network) DO UPDATE SET \
                 until_ms = excluded.until_ms, reason = excluded.reason, \
                 created_ms = excluded.created_ms, strikes = excluded.strikes",
        )
        .bind(&network)
        .bind(ban.until_ms)
        .bind(&reason)
        .bind(ban.created_ms)
        .bind(i64::from(ban.strikes))
        .execute(&self.pool)
        .await
        .map_err(|e| unavailable("upsert_ban", e))?;
        Ok(())
    }

    pub(super) async fn list_bans_impl(&self, now_ms: i64) -> Result<Vec<Ban>> {
        let rows: Vec<BanRow> = sqlx::query_as(
            "SELECT network, until_ms, reason, created_ms, strikes FROM bans \
             WHERE until_ms > ? ORDER BY network",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| unavailable("list_bans", e))?;
        rows.into_iter().map(ban_from_row).collect()
    }

    pub(super) async fn remove_ban_impl(&self, network: &str) -> Result<()> {
        let network = normalize_network(network)?;
        let done = sqlx::query("DELETE FROM bans WHERE network = ?")
            .bind(&network)
            .execute(&self.pool)
            .await
            .map_err(|e| unavailable("remove_ban", e))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(network));
        }
        Ok(())
    }
}
