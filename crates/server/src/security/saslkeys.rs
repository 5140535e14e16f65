//! Issue 6: the keys a password needs for the challenge-response mechanisms,
//! computed whenever a password is set (`account add`, `account passwd`,
//! `app-password add`). SCRAM-SHA-256 keys are derived with the account's
//! salt, so one SCRAM exchange can test the main password and every app
//! password at once; accounts whose password was set before schema 5 have no
//! SCRAM keys until their password is changed. CRAM-MD5 secrets are only kept
//! for app passwords that opt in, sealed with the secret key.

use portcullis_proto::sasl::scram;
use portcullis_store::{ScramCredential, Store, StoreError};

use crate::secretbox::{SecretBox, cram_context};

/// The salt and iteration count already used by the account's credentials,
/// or fresh ones (16 random bytes, RFC 7677's 4096 iterations).
pub async fn account_salt(store: &dyn Store, account: &str) -> Result<(Vec<u8>, u32), StoreError> {
    let keys = store.scram_keys(account).await?;
    Ok(match keys.into_iter().next() {
        Some(k) => (k.keys.salt, k.keys.iterations),
        None => (
            rand::random::<[u8; 16]>().to_vec(),
            scram::DEFAULT_ITERATIONS,
        ),
    })
}

/// SCRAM-SHA-256 keys of `password` with `salt`.
pub fn scram_credential(password: &str, salt: &[u8], iterations: u32) -> ScramCredential {
    let keys = scram::derive_keys(password.as_bytes(), salt, iterations);
    ScramCredential {
        salt: keys.salt,
        iterations: keys.iterations,
        stored_key: keys.stored_key.to_vec(),
        server_key: keys.server_key.to_vec(),
    }
}

/// Stores the SCRAM keys of the account's (new) main password.
pub async fn set_main_password_keys(
    store: &dyn Store,
    account: &str,
    password: &str,
) -> Result<(), StoreError> {
    let (salt, iterations) = account_salt(store, account).await?;
    let keys = scram_credential(password, &salt, iterations);
    store.set_scram_keys(account, Some(&keys)).await
}

/// Stores the SCRAM keys of a new app password and, when `cram` is given,
/// its sealed CRAM-MD5 secret.
pub async fn set_app_password_keys(
    store: &dyn Store,
    account: &str,
    name: &str,
    secret: &str,
    cram: Option<&SecretBox>,
) -> Result<(), StoreError> {
    let (salt, iterations) = account_salt(store, account).await?;
    let keys = scram_credential(secret, &salt, iterations);
    let sealed = match cram {
        Some(b) => Some(
            b.seal(&cram_context(account, name), secret.as_bytes())
                .ok_or_else(|| StoreError::Invalid("cannot seal the CRAM-MD5 secret".into()))?,
        ),
        None => None,
    };
    store
        .set_app_password_keys(account, name, Some(&keys), sealed.as_deref())
        .await
}
