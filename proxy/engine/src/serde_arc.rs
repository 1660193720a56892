//! `Option<Arc<str>>` as a plain optional string, for summaries that share
//! the compiled config's names (serde's own `Arc` support is behind its `rc`
//! feature, which would rebuild every crate that uses serde for two fields).

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&**v),
        None => s.serialize_none(),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Arc::from))
}
