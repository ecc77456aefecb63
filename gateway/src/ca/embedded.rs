//! TODO: the embedded CA.
