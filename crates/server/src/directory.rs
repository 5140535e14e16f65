//! Directory reads on the per-message and per-login paths, cached in memory
//! (issues 5 and 9).
//!
//! Every RCPT, MAIL and login asks the store about accounts, plans, local
//! domains, aliases, credentials (SCRAM keys and sealed CRAM-MD5 secrets
//! included) and DKIM keys; each answer from SQLite is a
//! round trip to its worker thread (two thread switches and a wake-up). The
//! data changes rarely — through the admin CLI, in another process — so the
//! answers are kept here, keyed by the store's change token
//! ([`Store::directory_token`]): the cache is emptied whenever the token
//! reads differently, which it does after every directory write of any
//! process. A plan change or a disabled account therefore applies at the
//! next lookup, as if nothing were cached. A store without a token gets no
//! caching at all.
//!
//! Only successful answers are kept (including "no such account"). Each map
//! holds at most [`MAX_ENTRIES`] keys and is emptied when full, so a client
//! trying many addresses cannot grow memory without bound.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use portcullis_store::{
    Account, AccountSecurity, AppPasswordSecret, CramSecret, Credential, DkimKey, Result,
    ScramKeysOf, Store,
};

/// Keys per map before it is emptied.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Default)]
struct Maps {
    accounts: HashMap<String, Option<Account>>,
    credentials: HashMap<String, Option<Credential>>,
    security: HashMap<String, Option<AccountSecurity>>,
    app_passwords: HashMap<String, Arc<Vec<AppPasswordSecret>>>,
    local_domains: HashMap<String, bool>,
    aliases: HashMap<String, Option<String>>,
    dkim_keys: HashMap<String, Arc<Vec<DkimKey>>>,
    scram_keys: HashMap<String, Arc<Vec<ScramKeysOf>>>,
    cram_secrets: HashMap<String, Arc<Vec<CramSecret>>>,
}

#[derive(Default)]
struct Cache {
    /// The token the maps were filled under.
    token: Option<u128>,
    maps: Maps,
}

/// Cached directory lookups in front of a [`Store`]; share one per process.
pub struct Directory {
    store: Arc<dyn Store>,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

impl Directory {
    pub fn new(store: Arc<dyn Store>) -> Directory {
        Directory {
            store,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// [`Store::account`], cached.
    pub async fn account(&self, address: &str) -> Result<Option<Account>> {
        self.lookup(address, |m| &mut m.accounts, || self.store.account(address))
            .await
    }

    /// [`Store::credential`], cached.
    pub async fn credential(&self, address: &str) -> Result<Option<Credential>> {
        self.lookup(
            address,
            |m| &mut m.credentials,
            || self.store.credential(address),
        )
        .await
    }

    /// [`Store::account_security`], cached.
    pub async fn account_security(&self, account: &str) -> Result<Option<AccountSecurity>> {
        self.lookup(
            account,
            |m| &mut m.security,
            || self.store.account_security(account),
        )
        .await
    }

    /// [`Store::app_password_secrets`], cached.
    pub async fn app_password_secrets(&self, account: &str) -> Result<Arc<Vec<AppPasswordSecret>>> {
        self.lookup(
            account,
            |m| &mut m.app_passwords,
            || async { self.store.app_password_secrets(account).await.map(Arc::new) },
        )
        .await
    }

    /// [`Store::is_local_domain`], cached.
    pub async fn is_local_domain(&self, domain: &str) -> Result<bool> {
        self.lookup(
            domain,
            |m| &mut m.local_domains,
            || self.store.is_local_domain(domain),
        )
        .await
    }

    /// [`Store::resolve_alias`], cached.
    pub async fn resolve_alias(&self, address: &str) -> Result<Option<String>> {
        self.lookup(
            address,
            |m| &mut m.aliases,
            || self.store.resolve_alias(address),
        )
        .await
    }

    /// [`Store::dkim_keys`], cached.
    pub async fn dkim_keys(&self, domain: &str) -> Result<Arc<Vec<DkimKey>>> {
        self.lookup(
            domain,
            |m| &mut m.dkim_keys,
            || async { self.store.dkim_keys(domain).await.map(Arc::new) },
        )
        .await
    }

    /// [`Store::scram_keys`], cached.
    pub async fn scram_keys(&self, account: &str) -> Result<Arc<Vec<ScramKeysOf>>> {
        self.lookup(
            account,
            |m| &mut m.scram_keys,
            || async { self.store.scram_keys(account).await.map(Arc::new) },
        )
        .await
    }

    /// [`Store::cram_secrets`] (sealed), cached.
    pub async fn cram_secrets(&self, account: &str) -> Result<Arc<Vec<CramSecret>>> {
        self.lookup(
            account,
            |m| &mut m.cram_secrets,
            || async { self.store.cram_secrets(account).await.map(Arc::new) },
        )
        .await
    }

    /// Answers from the cache when it was filled under the current token;
    /// otherwise asks the store and keeps the answer if the token did not
    /// move meanwhile. The token is read *before* the store, so an answer is
    /// never kept under a token older than the data it reflects.
    async fn lookup<T, F, Fut>(
        &self,
        key: &str,
        map: fn(&mut Maps) -> &mut HashMap<String, T>,
        load: F,
    ) -> Result<T>
    where
        T: Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let token = self.store.directory_token();
        if let Some(token) = token
            && let Ok(mut cache) = self.cache.lock()
        {
            if cache.token != Some(token) {
                cache.maps = Maps::default();
                cache.token = Some(token);
            }
            if let Some(hit) = map(&mut cache.maps).get(key) {
                return Ok(hit.clone());
            }
        }
        let value = load().await?;
        if let Some(token) = token
            && let Ok(mut cache) = self.cache.lock()
            && cache.token == Some(token)
        {
            let entries = map(&mut cache.maps);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(key.to_owned(), value.clone());
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use portcullis_store::SqliteStore;

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";

    async fn two_handles() -> (tempfile::TempDir, Directory, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let server: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
        let cli: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
        (dir, Directory::new(server), cli)
    }

    #[tokio::test]
    async fn a_change_from_another_handle_is_seen_at_the_next_lookup() {
        let (_dir, directory, cli) = two_handles().await;
        cli.add_account("ann@example.com", HASH, "trial")
            .await
            .unwrap();
        let first = directory.account("ann@example.com").await.unwrap().unwrap();
        assert_eq!(first.plan, "trial");
        // Served from the cache: the same answer, and the entry is there.
        assert_eq!(
            directory
                .account("ann@example.com")
                .await
                .unwrap()
                .unwrap()
                .plan,
            "trial"
        );
        assert!(
            directory
                .cache
                .lock()
                .unwrap()
                .maps
                .accounts
                .contains_key("ann@example.com")
        );
        cli.set_account_plan("ann@example.com", "premium")
            .await
            .unwrap();
        let after = directory.account("ann@example.com").await.unwrap().unwrap();
        assert_eq!(after.plan, "premium", "the plan change applies at once");

        assert!(!directory.is_local_domain("new.example").await.unwrap());
        cli.add_domain("new.example").await.unwrap();
        assert!(directory.is_local_domain("new.example").await.unwrap());

        assert!(
            directory
                .credential("bob@example.com")
                .await
                .unwrap()
                .is_none()
        );
        cli.add_account("bob@example.com", HASH, "trial")
            .await
            .unwrap();
        assert!(
            directory
                .credential("bob@example.com")
                .await
                .unwrap()
                .is_some(),
            "a negative answer is not kept past a change"
        );

        // SCRAM keys: a password change (new keys) applies at once.
        assert!(
            directory
                .scram_keys("ann@example.com")
                .await
                .unwrap()
                .is_empty()
        );
        let keys = portcullis_store::ScramCredential {
            salt: vec![7; 16],
            iterations: 4096,
            stored_key: vec![1; 32],
            server_key: vec![2; 32],
        };
        cli.set_scram_keys("ann@example.com", Some(&keys))
            .await
            .unwrap();
        let got = directory.scram_keys("ann@example.com").await.unwrap();
        assert_eq!(got.len(), 1, "new SCRAM keys are seen at once");
        assert_eq!(got[0].keys.salt, vec![7; 16]);
        assert!(
            directory
                .cram_secrets("ann@example.com")
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn maps_are_bounded() {
        let (_dir, directory, _cli) = two_handles().await;
        for i in 0..MAX_ENTRIES + 5 {
            directory
                .account(&format!("u{i}@example.com"))
                .await
                .unwrap();
        }
        let len = directory.cache.lock().unwrap().maps.accounts.len();
        assert!(len <= MAX_ENTRIES, "{len} entries");
    }
}
