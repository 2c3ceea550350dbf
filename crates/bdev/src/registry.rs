//! The bdevs of a process, by name.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::bdev::Bdev;
use crate::error::{Error, Result};

/// A set of named bdevs.
#[derive(Debug, Default)]
pub struct Registry {
    bdevs: RwLock<BTreeMap<String, Bdev>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a bdev under its name.
    ///
    /// # Errors
    /// [`Error::Exists`] when the name is taken.
    pub fn register(&self, bdev: Bdev) -> Result<()> {
        let mut m = self.bdevs.write().unwrap_or_else(|e| e.into_inner());
        let name = bdev.name().to_owned();
        if m.contains_key(&name) {
            return Err(Error::Exists(name));
        }
        tracing::info!(target: "vbdev::bdev", name = %name, "bdev registered");
        m.insert(name, bdev);
        Ok(())
    }

    /// The bdev called `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn get(&self, name: &str) -> Result<Bdev> {
        let m = self.bdevs.read().unwrap_or_else(|e| e.into_inner());
        m.get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(name.into()))
    }

    /// Removes and returns the bdev called `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn unregister(&self, name: &str) -> Result<Bdev> {
        let mut m = self.bdevs.write().unwrap_or_else(|e| e.into_inner());
        let b = m.remove(name).ok_or_else(|| Error::NotFound(name.into()))?;
        tracing::info!(target: "vbdev::bdev", name, "bdev unregistered");
        Ok(b)
    }

    /// All bdevs, sorted by name.
    pub fn list(&self) -> Vec<Bdev> {
        let m = self.bdevs.read().unwrap_or_else(|e| e.into_inner());
        m.values().cloned().collect()
    }
}
