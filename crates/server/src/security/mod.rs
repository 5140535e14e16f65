//! Account security (issue 4): password policy, app passwords, TOTP,
//! brute-force defence, bans and the auth audit trail. The AUTH flow that
//! ties them together is [`crate::auth::AuthService`].

pub mod apppass;
pub mod audit;
pub mod bans;
pub mod bruteforce;
pub mod policy;
pub mod saslkeys;
pub mod totp;
