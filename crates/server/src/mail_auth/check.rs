//! `portcullis domain check` (filled in below).
