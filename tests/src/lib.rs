//! quarry-tests: the multi-host lab and end-to-end tests (see the lab issue).
