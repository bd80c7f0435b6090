//! Parameter values bound at call time.

use crate::{Error, Result};
use cranelora_graph::TensorData;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Parameter name → value, each a contiguous row-major buffer (naturally
/// aligned for its dtype, which is all the generated code assumes).
///
/// For inference a new adapter replaces the whole set: build a new
/// `Bindings` and swap it in a [`SharedBindings`] while other threads keep
/// running on the old one. A [`crate::Trainer`] owns its `Bindings` and
/// writes each step's new values into them in place; publish a copy
/// (`SharedBindings::store(trainer.bindings().clone())`) for inference.
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    map: HashMap<String, TensorData>,
}

impl Bindings {
    /// No bindings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `name` to `value`.
    ///
    /// # Errors
    /// [`Error::NotContiguous`] for a value that is not in standard layout.
    pub fn insert(&mut self, name: impl Into<String>, value: TensorData) -> Result<()> {
        let name = name.into();
        if crate::compiled::data_ptr(&value).is_none() {
            return Err(Error::NotContiguous {
                what: "parameter",
                name,
            });
        }
        self.map.insert(name, value);
        Ok(())
    }

    /// Removes the binding of `name`.
    pub fn remove(&mut self, name: &str) {
        self.map.remove(name);
    }

    /// The value bound to `name`.
    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.map.get(name)
    }

    /// The value bound to `name`, for writing in place (training steps).
    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut TensorData> {
        self.map.get_mut(name)
    }

    /// Whether `name` is bound.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The number of bound names.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is bound.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every (name, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TensorData)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The interpreter's map of the same values (a copy).
    pub fn to_map(&self) -> cranelora_graph::Bindings {
        self.map.clone()
    }

    /// The bindings of the interpreter's map.
    ///
    /// # Errors
    /// As [`Bindings::insert`].
    pub fn from_map(map: &cranelora_graph::Bindings) -> Result<Self> {
        let mut b = Self::new();
        for (k, v) in map {
            b.insert(k.clone(), v.clone())?;
        }
        Ok(b)
    }
}

/// A [`Bindings`] set swappable as a whole while other threads use the old one.
#[derive(Debug, Default)]
pub struct SharedBindings {
    current: RwLock<Arc<Bindings>>,
}

impl SharedBindings {
    /// Shares `b`.
    pub fn new(b: Bindings) -> Self {
        Self {
            current: RwLock::new(Arc::new(b)),
        }
    }

    /// The current set (calls keep it alive while they run).
    pub fn load(&self) -> Arc<Bindings> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the set; calls already running finish with the old one.
    pub fn store(&self, b: Bindings) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(b);
    }
}
