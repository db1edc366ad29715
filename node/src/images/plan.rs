//! The image plan of a deploy (pure): which images to build where, which transfers to do,
//! and which images to remove once the deploy is done.
//!
//! Rules (issue 10, DESIGN.md):
//! - An image is built once, on one server: the first of `builders` (servers holding the
//!   source) that runs it, else the first builder.
//! - Each server gets the images its containers run and does not have, each from one server
//!   that has it (after the builds); a server's images come from as few senders as possible
//!   (one `docker save` carries several images and shares their layers).
//! - After the deploy, a server keeps an image only if it runs it or the previous revision
//!   ran it there (kept for rollback): so the build server keeps an image only if it runs it,
//!   and images older than the previous revision go.
//!
//! Only this stack's `build:` images are the plan's business: the caller passes nothing else
//! (images are tagged `quarry/STACK-DIR:DIGEST` and labelled with their stack).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::ServerId;

/// What the plan reads; every map is server -> image references.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageNeeds {
    /// The images each server's containers run once the deploy is done.
    pub runs: BTreeMap<ServerId, BTreeSet<String>>,
    /// The images the previous revision's containers ran on each server (kept for rollback).
    pub ran: BTreeMap<ServerId, BTreeSet<String>>,
    /// The images each server's engine has now.
    pub has: BTreeMap<ServerId, BTreeSet<String>>,
    /// Servers that can build (they hold the source), best first.
    pub builders: Vec<ServerId>,
}

/// One stream from a server to another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Transfer {
    /// The sending server (it has every image listed, once the builds are done).
    pub from: ServerId,
    /// The receiving server.
    pub to: ServerId,
    /// The images, sorted.
    pub images: Vec<String>,
}

/// What to do for a deploy's images, in this order: builds, transfers, (the deploy),
/// removals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlan {
    /// Image -> the server to build it on (images no server has).
    pub builds: BTreeMap<String, ServerId>,
    /// The transfers, sorted by receiver then sender.
    pub transfers: Vec<Transfer>,
    /// Server -> images to remove once the deploy is done.
    pub remove: BTreeMap<ServerId, BTreeSet<String>>,
}

/// Why no image plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An image must be built and no server holds the source.
    #[error("image {image} must be built and no server holds the stack's source: deploy again")]
    NoBuilder {
        /// The image.
        image: String,
    },
}

/// Plan a deploy's images (see the module docs).
pub fn plan(needs: &ImageNeeds) -> Result<ImagePlan, PlanError> {
    let empty = BTreeSet::new();
    let runs = |s: &ServerId| needs.runs.get(s).unwrap_or(&empty);
    // Who holds what once the builds are done.
    let mut holds: BTreeMap<ServerId, BTreeSet<String>> = needs.has.clone();
    let held: BTreeSet<&String> = needs.has.values().flatten().collect();
    let mut builds = BTreeMap::new();
    for image in needs.runs.values().flatten() {
        if held.contains(image) || builds.contains_key(image) {
            continue;
        }
        let on = needs
            .builders
            .iter()
            .find(|b| runs(b).contains(image))
            .or_else(|| needs.builders.first())
            .ok_or_else(|| PlanError::NoBuilder {
                image: image.clone(),
            })?;
        builds.insert(image.clone(), on.clone());
        holds.entry(on.clone()).or_default().insert(image.clone());
    }
    // Transfers: for each receiver, greedily the sender holding most of what it still needs.
    let sources = holds.clone();
    let mut transfers = Vec::new();
    for (to, want) in &needs.runs {
        let mut needed: BTreeSet<&String> = want
            .iter()
            .filter(|i| !sources.get(to).is_some_and(|h| h.contains(*i)))
            .collect();
        while !needed.is_empty() {
            let best = sources
                .iter()
                .filter(|(from, _)| *from != to)
                .map(|(from, h)| (from, needed.iter().filter(|i| h.contains(**i)).count()))
                .filter(|(_, n)| *n > 0)
                // Most images first; among equals the smallest id (max_by keeps the last max).
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)));
            let Some((from, _)) = best else {
                break; // unreachable: every needed image is held or built somewhere
            };
            let images: Vec<String> = needed
                .iter()
                .filter(|i| sources[from].contains(**i))
                .map(|i| (*i).clone())
                .collect();
            for i in &images {
                needed.remove(i);
                holds.entry(to.clone()).or_default().insert(i.clone());
            }
            transfers.push(Transfer {
                from: from.clone(),
                to: to.clone(),
                images,
            });
        }
    }
    transfers.sort();
    // Removals: what a server holds and neither runs nor ran.
    let mut remove = BTreeMap::new();
    for (server, images) in &holds {
        let ran = needs.ran.get(server).unwrap_or(&empty);
        let drop: BTreeSet<String> = images
            .iter()
            .filter(|i| !runs(server).contains(*i) && !ran.contains(*i))
            .cloned()
            .collect();
        if !drop.is_empty() {
            remove.insert(server.clone(), drop);
        }
    }
    Ok(ImagePlan {
        builds,
        transfers,
        remove,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(n: &str) -> ServerId {
        ServerId(n.to_owned())
    }

    fn map(entries: &[(&str, &[&str])]) -> BTreeMap<ServerId, BTreeSet<String>> {
        entries
            .iter()
            .map(|(k, v)| (s(k), v.iter().map(|i| (*i).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn a_first_deploy_builds_on_a_server_that_runs_the_image_and_sends_it_to_the_others() {
        // web runs on h2 and h3, kv on h1; h1 and h2 hold the source.
        let needs = ImageNeeds {
            runs: map(&[("h1", &["kv:1"]), ("h2", &["web:1"]), ("h3", &["web:1"])]),
            ran: BTreeMap::new(),
            has: BTreeMap::new(),
            builders: vec![s("h1"), s("h2")],
        };
        let p = plan(&needs).expect("plan");
        assert_eq!(
            p.builds,
            BTreeMap::from([("kv:1".to_owned(), s("h1")), ("web:1".to_owned(), s("h2"))])
        );
        assert_eq!(
            p.transfers,
            vec![Transfer {
                from: s("h2"),
                to: s("h3"),
                images: vec!["web:1".to_owned()]
            }]
        );
        assert!(p.remove.is_empty(), "{:?}", p.remove);
    }

    #[test]
    fn the_build_server_keeps_an_image_only_if_it_runs_it() {
        // h1 holds the source but runs nothing of web.
        let needs = ImageNeeds {
            runs: map(&[("h2", &["web:1"]), ("h3", &["web:1"])]),
            builders: vec![s("h1")],
            ..ImageNeeds::default()
        };
        let p = plan(&needs).expect("plan");
        assert_eq!(p.builds["web:1"], s("h1"));
        let to: Vec<&ServerId> = p.transfers.iter().map(|t| &t.to).collect();
        assert_eq!(to, vec![&s("h2"), &s("h3")]);
        assert!(p.transfers.iter().all(|t| t.from == s("h1")));
        assert_eq!(p.remove, map(&[("h1", &["web:1"])]));
    }

    #[test]
    fn the_previous_revisions_images_stay_where_they_ran_and_older_ones_go() {
        let needs = ImageNeeds {
            runs: map(&[("h1", &["web:3"]), ("h2", &["web:3"])]),
            ran: map(&[("h1", &["web:2"]), ("h3", &["web:2"])]),
            has: map(&[
                ("h1", &["web:1", "web:2", "web:3"]),
                ("h2", &["web:2"]),
                ("h3", &["web:2", "web:1"]),
            ]),
            builders: vec![s("h3")],
        };
        let p = plan(&needs).expect("plan");
        assert!(p.builds.is_empty());
        assert_eq!(
            p.transfers,
            vec![Transfer {
                from: s("h1"),
                to: s("h2"),
                images: vec!["web:3".to_owned()]
            }]
        );
        assert_eq!(
            p.remove,
            map(&[("h1", &["web:1"]), ("h2", &["web:2"]), ("h3", &["web:1"])])
        );
    }

    #[test]
    fn one_sender_carries_every_image_a_server_needs_when_it_can() {
        let needs = ImageNeeds {
            runs: map(&[("h3", &["a:1", "b:1", "c:1"])]),
            has: map(&[("h1", &["a:1"]), ("h2", &["a:1", "b:1", "c:1"])]),
            ..ImageNeeds::default()
        };
        let p = plan(&needs).expect("plan");
        assert_eq!(p.transfers.len(), 1);
        assert_eq!(p.transfers[0].from, s("h2"));
        assert_eq!(p.transfers[0].images.len(), 3);
    }

    #[test]
    fn an_image_to_build_without_a_source_is_an_error() {
        let needs = ImageNeeds {
            runs: map(&[("h1", &["web:1"])]),
            ..ImageNeeds::default()
        };
        assert_eq!(
            plan(&needs),
            Err(PlanError::NoBuilder {
                image: "web:1".to_owned()
            })
        );
    }

    fn sets(n_servers: usize) -> impl Strategy<Value = Vec<BTreeSet<String>>> {
        prop::collection::vec(
            prop::collection::btree_set(
                prop::sample::select(vec!["a:1", "a:2", "b:1", "b:2", "c:1"])
                    .prop_map(String::from),
                0..4,
            ),
            n_servers,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn every_server_ends_with_what_it_runs_and_keeps_only_what_it_runs_or_ran(
            runs in sets(4), ran in sets(4), has in sets(4), builders in prop::collection::vec(0usize..4, 1..3),
        ) {
            let id = |i: usize| s(&format!("h{i}"));
            let to_map = |v: &[BTreeSet<String>]| -> BTreeMap<ServerId, BTreeSet<String>> {
                v.iter().enumerate().map(|(i, x)| (id(i), x.clone())).collect()
            };
            let needs = ImageNeeds {
                runs: to_map(&runs),
                ran: to_map(&ran),
                has: to_map(&has),
                builders: builders.iter().map(|i| id(*i)).collect(),
            };
            let p = plan(&needs).expect("a builder exists");
            // Play it: builds, then transfers (each source holds what it sends, each receiver
            // lacked it), then removals.
            let mut holds = needs.has.clone();
            for (image, on) in &p.builds {
                prop_assert!(!needs.has.values().any(|h| h.contains(image)), "{image} built though present");
                prop_assert!(needs.builders.contains(on));
                if needs.builders.iter().any(|b| needs.runs[b].contains(image)) {
                    prop_assert!(needs.runs[on].contains(image), "{image} built on {on}, which does not run it");
                }
                holds.entry(on.clone()).or_default().insert(image.clone());
            }
            let before = holds.clone();
            for t in &p.transfers {
                prop_assert_ne!(&t.from, &t.to);
                for i in &t.images {
                    prop_assert!(before[&t.from].contains(i), "{} sends {i} it lacks", t.from);
                    prop_assert!(!before.get(&t.to).is_some_and(|h| h.contains(i)), "{} gets {i} twice", t.to);
                    prop_assert!(holds.entry(t.to.clone()).or_default().insert(i.clone()));
                }
            }
            for (server, images) in &p.remove {
                for i in images {
                    prop_assert!(holds.get_mut(server).is_some_and(|h| h.remove(i)));
                }
            }
            for i in 0..4 {
                let h = holds.get(&id(i)).cloned().unwrap_or_default();
                prop_assert!(runs[i].is_subset(&h), "h{i} lacks an image it runs");
                let keep: BTreeSet<String> = runs[i].union(&ran[i]).cloned().collect();
                prop_assert!(h.is_subset(&keep), "h{i} keeps {h:?} beyond {keep:?}");
                let had: BTreeSet<String> = before.get(&id(i)).cloned().unwrap_or_default();
                let kept_old: BTreeSet<String> = had.intersection(&ran[i]).cloned().collect();
                prop_assert!(kept_old.is_subset(&h), "h{i} lost a previous revision's image");
            }
        }
    }
}
