//! Incremental reads keep `user.groups` exactly as a full read would make them, whatever group
//! changes come in between: random sequences of memberships added and removed, groups created,
//! renamed (into and out of the `groups` filter) and deleted, against the fake Okta and the fake
//! Microsoft Graph; for Graph also groups added to and removed from other groups (nested
//! groups, cycles included), with `nested_groups` on and off. After each incremental read is
//! committed, every user's cached `groups` must equal what a fresh full read gives.

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use socialtalent_sync::config::Config;
use socialtalent_sync::model::IdpId;
use socialtalent_sync::source;
use socialtalent_sync::state::State;

use crate::support::fake_graph::FakeGraph;
use crate::support::fake_okta::FakeOkta;

const USERS: usize = 12;
const STEPS: usize = 6;
const SEEDS: u64 = 8;
/// Entra ID draws from more kinds of edits (links between groups, cycles), so more seeds.
const ENTRA_SEEDS: u64 = 24;

/// One change to the directory's groups.
#[derive(Debug, Clone)]
enum Edit {
    Add {
        group: usize,
        user: usize,
    },
    Remove {
        group: usize,
        user: usize,
    },
    Create {
        group: usize,
    },
    Rename {
        group: usize,
    },
    Delete {
        group: usize,
    },
    /// The group `child` becomes a member of the group `parent` (Entra ID only).
    Nest {
        parent: usize,
        child: usize,
    },
    /// The group `child` leaves the members of the group `parent` (Entra ID only).
    Unnest {
        parent: usize,
        child: usize,
    },
    /// Each of the two groups becomes a member of the other (Entra ID only).
    Cycle {
        a: usize,
        b: usize,
    },
}

/// The groups the model thinks exist (index → name), to draw only edits that apply.
struct Model {
    groups: BTreeMap<usize, String>,
    next: usize,
    renames: usize,
}

impl Model {
    fn new() -> Model {
        Model {
            groups: [(0, "LP Alpha".to_owned()), (1, "Other Beta".to_owned())].into(),
            next: 2,
            renames: 0,
        }
    }

    /// A random edit that applies to the current groups.
    fn draw(&mut self, rng: &mut StdRng) -> Edit {
        let existing: Vec<usize> = self.groups.keys().copied().collect();
        let pick = |rng: &mut StdRng| existing[rng.random_range(0..existing.len())];
        match rng.random_range(0..10) {
            0..=3 if !existing.is_empty() => Edit::Add {
                group: pick(rng),
                user: rng.random_range(0..USERS),
            },
            4..=5 if !existing.is_empty() => Edit::Remove {
                group: pick(rng),
                user: rng.random_range(0..USERS),
            },
            6..=7 if !existing.is_empty() => {
                let group = pick(rng);
                self.renames += 1;
                // In or out of the filter (`LP *`), at random.
                let prefix = if rng.random_bool(0.5) { "LP" } else { "Other" };
                self.groups
                    .insert(group, format!("{prefix} Renamed {}", self.renames));
                Edit::Rename { group }
            }
            8 if existing.len() > 1 => {
                let group = pick(rng);
                self.groups.remove(&group);
                Edit::Delete { group }
            }
            _ => {
                let group = self.next;
                self.next += 1;
                let prefix = if rng.random_bool(0.5) { "LP" } else { "Other" };
                self.groups.insert(group, format!("{prefix} New {group}"));
                Edit::Create { group }
            }
        }
    }

    /// A random edit that applies to the current groups, links between groups included: half
    /// of the time a group added to or removed from another, two groups made members of each
    /// other, or a group deleted while it has links.
    fn draw_nested(&mut self, rng: &mut StdRng) -> Edit {
        let existing: Vec<usize> = self.groups.keys().copied().collect();
        if existing.len() < 2 || rng.random_bool(0.5) {
            return self.draw(rng);
        }
        let first = existing[rng.random_range(0..existing.len())];
        let others: Vec<usize> = existing.into_iter().filter(|g| *g != first).collect();
        let second = others[rng.random_range(0..others.len())];
        match rng.random_range(0..6) {
            0..=1 => Edit::Nest {
                parent: first,
                child: second,
            },
            2 => Edit::Unnest {
                parent: first,
                child: second,
            },
            3..=4 => Edit::Cycle {
                a: first,
                b: second,
            },
            _ => {
                self.groups.remove(&first);
                Edit::Delete { group: first }
            }
        }
    }
}

fn config(text: &str) -> Config {
    Config::parse(
        Path::new("groups.toml"),
        &format!(
            "{text}\n[target]\nbase_url = \"http://127.0.0.1:9/v2\"\ntoken = \"unused\"\n[mapping]\nuserName = \"{{{{ user.email }}}}\"\n"
        ),
    )
    .expect("a valid configuration")
}

/// Every cached user's groups, by id.
fn cached_groups(state: &State, ids: &[String]) -> BTreeMap<String, Vec<String>> {
    ids.iter()
        .map(|id| {
            let user = state
                .cached_source_user(&IdpId(id.clone()))
                .expect("cache")
                .expect("cached");
            (id.clone(), user.groups)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_incremental_reads_keep_groups_as_a_full_read_makes_them() {
    for seed in 0..SEEDS {
        let okta = FakeOkta::start().await;
        let ids: Vec<String> = (0..USERS).map(|i| format!("00u{i:04}")).collect();
        for (index, id) in ids.iter().enumerate() {
            okta.add_user(
                id,
                "ACTIVE",
                json!({"login": format!("u{index}@x.example"), "email": format!("u{index}@x.example"),
                       "firstName": "U", "lastName": format!("{index}")}),
            );
        }
        let mut model = Model::new();
        for (group, name) in &model.groups {
            okta.add_group(&format!("00g{group:04}"), name);
        }
        okta.advance_clock(3600);
        let config = config(&format!(
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\ntoken = \"{}\"\ngroups = [\"LP *\"]",
            okta.url,
            okta.api_token()
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        let state = State::open(dir.path()).expect("state");
        let first = source::read(&config.source, Some(&state), false)
            .await
            .expect("first read");
        state.apply_source_commit(&first.commit).expect("commit");

        let mut rng = StdRng::seed_from_u64(seed);
        let mut history = Vec::new();
        for _ in 0..STEPS {
            okta.advance_clock(300);
            for _ in 0..rng.random_range(1..4) {
                let edit = model.draw(&mut rng);
                history.push(edit.clone());
                let id = |group: usize| format!("00g{group:04}");
                match edit {
                    Edit::Add { group, user } => okta.add_member(&id(group), &ids[user]),
                    Edit::Remove { group, user } => okta.remove_member(&id(group), &ids[user]),
                    Edit::Create { group } => okta.add_group(&id(group), &model.groups[&group]),
                    Edit::Rename { group } => okta.rename_group(&id(group), &model.groups[&group]),
                    Edit::Delete { group } => okta.delete_group(&id(group)),
                    Edit::Nest { .. } | Edit::Unnest { .. } | Edit::Cycle { .. } => {
                        unreachable!("drawn for Entra ID only")
                    }
                }
                okta.advance_clock(rng.random_range(1..20));
            }
            okta.advance_clock(60);
            let read = source::read(&config.source, Some(&state), false)
                .await
                .expect("incremental read");
            assert!(!read.full);
            state.apply_source_commit(&read.commit).expect("commit");
            let full = source::read(&config.source, None, true)
                .await
                .expect("full read");
            let expected: BTreeMap<String, Vec<String>> = full
                .users
                .iter()
                .map(|user| (user.id.0.clone(), user.groups.clone()))
                .collect();
            assert_eq!(
                cached_groups(&state, &ids),
                expected,
                "seed {seed}, after {history:?}"
            );
        }
    }
}

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "graph-client-secret-value";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_incremental_reads_keep_groups_as_a_full_read_makes_them() {
    for seed in 0..ENTRA_SEEDS {
        // Most seeds flatten nested groups (the default); every fourth reads direct members only.
        let nested = seed % 4 != 3;
        let graph = FakeGraph::start().await;
        graph.register_app_secret(CLIENT_ID, SECRET);
        let ids: Vec<String> = (0..USERS).map(|i| format!("u{i:04}")).collect();
        for (index, id) in ids.iter().enumerate() {
            graph.add_user(
                id,
                json!({"userPrincipalName": format!("u{index}@x.example"), "mail": format!("u{index}@x.example"),
                       "givenName": "U", "surname": format!("{index}"), "displayName": format!("U {index}"),
                       "accountEnabled": true}),
            );
        }
        let mut model = Model::new();
        for (group, name) in &model.groups {
            graph.add_group(&format!("g{group:04}"), name);
        }
        let config = config(&format!(
            "[source]\nkind = \"entra\"\n[source.entra]\ntenant_id = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{SECRET}\"\ngraph_url = \"{url}\"\nlogin_url = \"{url}\"\ngroups = [\"LP *\"]\nnested_groups = {nested}",
            graph.tenant(),
            url = graph.url
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        let state = State::open(dir.path()).expect("state");
        let first = source::read(&config.source, Some(&state), false)
            .await
            .expect("first read");
        state.apply_source_commit(&first.commit).expect("commit");

        let mut rng = StdRng::seed_from_u64(seed);
        let mut history = Vec::new();
        for _ in 0..STEPS {
            for _ in 0..rng.random_range(1..4) {
                let edit = model.draw_nested(&mut rng);
                history.push(edit.clone());
                let id = |group: usize| format!("g{group:04}");
                match edit {
                    Edit::Add { group, user } => graph.add_member(&id(group), &ids[user]),
                    Edit::Remove { group, user } => graph.remove_member(&id(group), &ids[user]),
                    Edit::Create { group } => graph.add_group(&id(group), &model.groups[&group]),
                    Edit::Rename { group } => graph.rename_group(&id(group), &model.groups[&group]),
                    Edit::Delete { group } => graph.delete_group(&id(group)),
                    Edit::Nest { parent, child } => graph.add_group_member(&id(parent), &id(child)),
                    Edit::Unnest { parent, child } => {
                        graph.remove_group_member(&id(parent), &id(child));
                    }
                    Edit::Cycle { a, b } => {
                        graph.add_group_member(&id(a), &id(b));
                        graph.add_group_member(&id(b), &id(a));
                    }
                }
            }
            let read = source::read(&config.source, Some(&state), false)
                .await
                .expect("incremental read");
            assert!(!read.full);
            state.apply_source_commit(&read.commit).expect("commit");
            let full = source::read(&config.source, None, true)
                .await
                .expect("full read");
            let expected: BTreeMap<String, Vec<String>> = full
                .users
                .iter()
                .map(|user| (user.id.0.clone(), user.groups.clone()))
                .collect();
            assert_eq!(
                cached_groups(&state, &ids),
                expected,
                "seed {seed}, nested_groups = {nested}, after {history:?}"
            );
        }
    }
}
