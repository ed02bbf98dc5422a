//! What the macros expand to, compiled and run with the workspace's tests (moved here from
//! trybuild's `pass` cases, which built and linked a second copy of every dependency): generic
//! structs, nested modules, a user's own `Default`, visibility and attributes kept as written.
//! The misuses and their reviewed messages stay in `lightning-macros/tests/ui/`.
mod generics;
mod nested;
mod own_default;
mod visibility;
