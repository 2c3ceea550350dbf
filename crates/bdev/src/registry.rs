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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio_blk::{self, AttachOptions};
    use std::sync::Arc;
    use vbdev_virtio::testing::{FakeBlk, FakeBlkConfig};

    fn bdev(name: &str) -> Bdev {
        let dev = Arc::new(FakeBlk::new(FakeBlkConfig::new(1 << 20)).expect("fake device"));
        virtio_blk::attach(name, dev, &AttachOptions::default()).expect("attach")
    }

    #[test]
    fn names_are_unique_and_listed_in_order() {
        let r = Registry::new();
        r.register(bdev("b")).unwrap();
        r.register(bdev("a")).unwrap();
        let e = r.register(bdev("a")).expect_err("duplicate");
        assert!(matches!(&e, Error::Exists(n) if n == "a"), "{e}");
        assert_eq!(e.to_string(), "bdev a already exists");
        let names: Vec<_> = r.list().iter().map(|b| b.name().to_owned()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(r.get("b").unwrap().num_blocks(), (1 << 20) / 512);
    }

    #[test]
    fn unregister_removes_and_unknown_names_are_errors() {
        let r = Registry::new();
        r.register(bdev("x")).unwrap();
        let b = r.unregister("x").unwrap();
        assert_eq!(b.name(), "x");
        assert!(matches!(r.get("x"), Err(Error::NotFound(n)) if n == "x"));
        assert!(matches!(r.unregister("x"), Err(Error::NotFound(_))));
        assert!(r.list().is_empty());
    }
}
