//! Retries of repository requests. (Being written.)
