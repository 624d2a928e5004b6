//! Conversion to and from hgq-core quantizer descriptions.
