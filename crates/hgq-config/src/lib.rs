//! Serde for the Keras JSON that hgq2 reads and writes.
