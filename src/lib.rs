//! Server-side sessions for Rocket 0.5.
#![deny(missing_docs)]

mod b64;
pub mod clock;
pub mod config;
mod cookie;
pub mod error;
mod fairing;
mod id;
mod manager;
mod session;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{SessionConfig, StoreConfig};
pub use error::{ConfigError, SessionError, StoreError};
pub use fairing::Sessions;
pub use id::{InvalidSessionId, SessionId, StoreKey};
pub use manager::SessionManager;
pub use session::Session;
