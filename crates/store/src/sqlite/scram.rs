//! The issue 6 part of the SQLite backend: SCRAM-SHA-256 keys of main and
//! app passwords, and sealed CRAM-MD5 secrets. Owns that SQL only; the keys
//! are computed by the caller and the secrets sealed by it.

use super::{SqliteStore, unavailable};
use crate::validate::{normalize_address, normalize_app_password_name};
use crate::{CramSecret, Result, ScramCredential, ScramKeysOf, StoreError};

/// RFC 7677 4: at least 4096 iterations.
const MIN_ITERATIONS: u32 = 4096;
const MAX_SEALED: usize = 512;

fn check_keys(keys: &ScramCredential) -> Result<()> {
    if keys.stored_key.len() != 32
        || keys.server_key.len() != 32
        || !(8..=64).contains(&keys.salt.len())
        || keys.iterations < MIN_ITERATIONS
    {
        return Err(StoreError::Invalid(
            "SCRAM keys need 32-byte keys, an 8 to 64 byte salt and at least 4096 iterations"
                .into(),
        ));
    }
    Ok(())
}

type KeysRow = (
    Option<String>,
    Option<Vec<u8>>,
    Option<i64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

fn keys_from_row((name, salt, iterations, stored, server): KeysRow) -> Option<ScramKeysOf> {
    Some(ScramKeysOf {
        app_password: name,
        keys: ScramCredential {
            salt: salt?,
            iterations: u32::try_from(iterations?).ok()?,
            stored_key: stored?,
            server_key: server?,
        },
    })
}

impl SqliteStore {
    pub(super) async fn set_scram_keys_impl(
        &self,
        account: &str,
        keys: Option<&ScramCredential>,
    ) -> Result<()> {
        let account = normalize_address(account)?;
        if let Some(k) = keys {
            check_keys(k)?;
        }
        let done = sqlx::query(
            "UPDATE accounts SET scram_salt = ?, scram_iterations = ?, scram_stored_key = ?, \
             scram_server_key = ? WHERE address = ?",
        )
        .bind(keys.map(|k| k.salt.clone()))
        .bind(keys.map(|k| i64::from(k.iterations)))
        .bind(keys.map(|k| k.stored_key.clone()))
        .bind(keys.map(|k| k.server_key.clone()))
        .bind(&account)
        .execute(&self.pool)
        .await
        .map_err(|e| unavailable("set_scram_keys", e))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(account));
        }
        Ok(())
    }

    pub(super) async fn set_app_password_keys_impl(
        &self,
        account: &str,
        name: &str,
        scram: Option<&ScramCredential>,
        cram_sealed: Option<&[u8]>,
    ) -> Result<()> {
        let account = normalize_address(account)?;
        let name = normalize_app_password_name(name)?;
        if let Some(k) = scram {
            check_keys(k)?;
        }
        if cram_sealed.is_some_and(|c| c.is_empty() || c.len() > MAX_SEALED) {
            return Err(StoreError::Invalid(
                "a sealed CRAM-MD5 secret is 1 to 512 bytes".into(),
            ));
        }
        let done = sqlx::query(
            "UPDATE app_passwords SET scram_salt = ?, scram_iterations = ?, \
             scram_stored_key = ?, scram_server_key = ?, \
             cram_secret = COALESCE(?, cram_secret) \
             WHERE account = ? AND name = ?",
        )
        .bind(scram.map(|k| k.salt.clone()))
        .bind(scram.map(|k| i64::from(k.iterations)))
        .bind(scram.map(|k| k.stored_key.clone()))
        .bind(scram.map(|k| k.server_key.clone()))
        .bind(cram_sealed)
        .bind(&account)
        .bind(&name)
        .execute(&self.pool)
        .await
        .map_err(|e| unavailable("set_app_password_keys", e))?;
        if done.rows_affected() == 0 {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE address = ?)")
                    .bind(&account)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| unavailable("set_app_password_keys", e))?;
            return Err(StoreError::NotFound(if exists { name } else { account }));
        }
        Ok(())
    }

    /// NULL (the main password) sorts first in SQLite, then names.
    pub(super) async fn scram_keys_impl(&self, account: &str) -> Result<Vec<ScramKeysOf>> {
        let Ok(account) = normalize_address(account) else {
            return Ok(Vec::new());
        };
        let rows: Vec<KeysRow> = sqlx::query_as(
            "SELECT NULL, scram_salt, scram_iterations, scram_stored_key, scram_server_key \
             FROM accounts WHERE address = ? \
             UNION ALL \
             SELECT name, scram_salt, scram_iterations, scram_stored_key, scram_server_key \
             FROM app_passwords WHERE account = ? \
             ORDER BY 1",
        )
        .bind(&account)
        .bind(&account)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| unavailable("scram_keys", e))?;
        Ok(rows.into_iter().filter_map(keys_from_row).collect())
    }

    pub(super) async fn cram_secrets_impl(&self, account: &str) -> Result<Vec<CramSecret>> {
        let Ok(account) = normalize_address(account) else {
            return Ok(Vec::new());
        };
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT name, cram_secret FROM app_passwords \
             WHERE account = ? AND cram_secret IS NOT NULL ORDER BY name",
        )
        .bind(&account)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| unavailable("cram_secrets", e))?;
        Ok(rows
            .into_iter()
            .map(|(app_password, sealed)| CramSecret {
                app_password,
                sealed,
            })
            .collect())
    }
}
