//! Registry configuration (placeholder).
