//! What every HTTP edge shares: one request [`limiter::Limiter`] per remote system and the
//! retry policy ([`retry`]) with `Retry-After` and jittered exponential backoff.

pub mod limiter;
pub mod retry;
pub mod text;
