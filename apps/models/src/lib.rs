//! Trainable transformer models.
