//! The cluster CA, node certificates, and the rustls/quinn configurations (in progress).
