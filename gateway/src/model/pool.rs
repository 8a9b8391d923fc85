//! Recycles sample vectors between the sources and the core, so steady ingestion allocates nothing.

use std::sync::Mutex;

use crate::model::Sample;

/// Most vectors kept; beyond it they are freed, so a burst cannot pin memory.
const KEEP: usize = 128;

/// A pool of empty sample vectors. The lock is taken once per batch, never per sample.
#[derive(Debug, Default)]
pub struct SamplePool {
    free: Mutex<Vec<Vec<Sample>>>,
}

impl SamplePool {
    /// An empty vector, reused when one is free.
    pub fn take(&self) -> Vec<Sample> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.pop().unwrap_or_else(|| Vec::with_capacity(256))
    }

    /// Gives a vector back for reuse.
    pub fn put(&self, mut samples: Vec<Sample>) {
        samples.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < KEEP {
            free.push(samples);
        }
    }
}
