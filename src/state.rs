//! The embedded state (sled): per IdP user what SocialTalent last confirmed, consecutive
//! failures, run history, cursors and a format version. One process at a time: sled locks the
//! database, and a second opener gets [`StateError::Locked`] naming the directory and, when known,
//! the process that holds it. A record is written only after SocialTalent confirmed the write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::model::{
    AccountStatus, Attributes, CacheUpdate, Digest, FailureRecord, IdpId, Keeping, KnownUser,
    Snapshot, SourceCommit, SourceUser, TableUpdate, UserRecord, attributes_digest,
};
use crate::plan::Summary;

/// The on-disk format this build writes and understands. Version 2 keeps each user's pushed
/// attributes in their own tree (`pushed`), apart from the small record in `users`, so that
/// loading the state reads only the records; a version-1 state is converted on open.
pub const FORMAT_VERSION: u32 = 2;

/// How many runs the history keeps.
const RUNS_KEPT: usize = 200;

const USERS: &str = "users";
const FAILURES: &str = "failures";
const RUNS: &str = "runs";
const META: &str = "meta";
const SOURCE: &str = "source";
const PUSHED: &str = "pushed";
const OWNER_FILE: &str = "owner";
/// The `meta` key of the pending holds (a JSON list of [`HeldEntry`]).
const PENDING_HOLDS: &str = "pending_holds";
/// The redaction level of the stored run and failure records. A version whose redaction step
/// removes more bumps it; the first open by that version scrubs what older ones stored.
const REDACTION_LEVEL: u32 = 1;
/// sled's page cache.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// A state problem; every variant names the directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the state.
    #[error("the state directory {} is in use by another socialtalent-sync process{}; while the daemon runs, `status`, `sync`, `approve` and `preview` are served through its control socket (which did not answer here), other commands need it stopped: stop it and try again", path.display(), owner.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
    Locked {
        /// The state directory.
        path: PathBuf,
        /// What the owner file says about the holder.
        owner: Option<String>,
    },
    /// The state was written by a newer version.
    #[error("the state in {} has format version {found}; this build understands up to {FORMAT_VERSION}: upgrade socialtalent-sync", path.display())]
    NewerFormat {
        /// The state directory.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The database could not be opened, read or written.
    #[error("the state in {} cannot be used: {message}", path.display())]
    Storage {
        /// The state directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// One run, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339).
    pub finished_at: String,
    /// Whether it was a full run.
    pub full: bool,
    /// The source kind.
    pub source: String,
    /// Records read from the source.
    pub users_read: usize,
    /// The counts.
    pub summary: Summary,
    /// `ok`, `held`, or `failed`.
    pub outcome: String,
    /// Why the run failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Deactivations held by the safety limits.
    #[serde(default)]
    pub held: Vec<HeldEntry>,
}

/// A held deactivation, for `status` (pending until released or moot, see [`crate::holds`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldEntry {
    /// The IdP user.
    pub idp_id: IdpId,
    /// The SocialTalent userName.
    #[serde(rename = "userName")]
    pub user_name: String,
    /// Why it was held.
    pub reason: String,
    /// The SocialTalent account, when known (an orphan's only identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scim_id: Option<String>,
    /// When a run first held it (RFC 3339); empty in run records written before holds were
    /// kept pending.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub since: String,
}

/// The open state database.
#[derive(Debug, Clone)]
pub struct State {
    path: PathBuf,
    db: sled::Db,
    users: sled::Tree,
    failures: sled::Tree,
    runs: sled::Tree,
    meta: sled::Tree,
    source: sled::Tree,
    pushed: sled::Tree,
    /// Whether the `failures` tree may hold a record: when it holds none, a success has no
    /// failure count to clear and skips that write. Shared by every handle of this state.
    failures_present: Arc<AtomicBool>,
}

/// A user record as the `users` tree holds it: everything but the attributes, which are in
/// the `pushed` tree under the same key. (A version-1 record also holds `pushed`; serde
/// skips it without building it.)
#[derive(Serialize, Deserialize)]
struct Head {
    scim_id: String,
    user_name: String,
    status: AccountStatus,
    #[serde(default)]
    updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pushed_digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    not_kept: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unconfirmed: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    normal: BTreeMap<String, serde_json::Value>,
}

impl Head {
    /// The head of a full record (its attributes' digest is computed when it is written).
    fn of(record: &UserRecord) -> Head {
        Head {
            scim_id: record.scim_id.clone(),
            user_name: record.user_name.clone(),
            status: record.status,
            updated_at: record.updated_at.clone(),
            digest: record.digest,
            pushed_digest: None,
            not_kept: record.not_kept.clone(),
            unconfirmed: record.unconfirmed.clone(),
            normal: record.normal.clone(),
        }
    }
}

impl State {
    /// Opens (or creates) the state directory, taking the single-process lock.
    ///
    /// # Errors
    /// [`StateError`]: held by another process, newer format, or unusable.
    pub fn open(path: &Path) -> Result<State, StateError> {
        let storage = |message: String| StateError::Storage {
            path: path.to_owned(),
            message,
        };
        create_private_dir(path).map_err(|error| storage(error.to_string()))?;
        if let Some(mode) = open_to_others(path) {
            tracing::warn!(
                message = "The state directory is open to other users; it holds names, emails and SocialTalent ids. Make it private with chmod 700.",
                path = %path.display(),
                mode = %format!("{mode:04o}")
            );
        }
        let db = sled::Config::new()
            .path(path.join("db"))
            .mode(sled::Mode::LowSpace)
            // sled caches up to 1 GiB by default; the state is read once per run and written
            // per user, so a small cache keeps the daemon and a 100,000-user run lean.
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|error| open_error(path, error))?;
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|error| storage(error.to_string()))
        };
        let failures = tree(FAILURES)?;
        let state = State {
            path: path.to_owned(),
            users: tree(USERS)?,

            runs: tree(RUNS)?,
            meta: tree(META)?,
            source: tree(SOURCE)?,
            pushed: tree(PUSHED)?,
            failures_present: Arc::new(AtomicBool::new(!failures.is_empty())),
            failures,
            db,
        };
        match state.meta_u32("format_version")? {
            Some(found) if found > FORMAT_VERSION => {
                return Err(StateError::NewerFormat {
                    path: path.to_owned(),
                    found,
                });
            }
            Some(FORMAT_VERSION) => {}
            Some(_) => {
                state.split_records()?;
                state.set_meta("format_version", &FORMAT_VERSION.to_string())?;
                state.flush()?;
            }
            None => state.set_meta("format_version", &FORMAT_VERSION.to_string())?,
        }
        if state.meta_u32("redaction")?.unwrap_or(0) < REDACTION_LEVEL {
            state.scrub_records()?;
            state.set_meta("redaction", &REDACTION_LEVEL.to_string())?;
            state.flush()?;
        }
        let owner = format!(
            "pid {}, started {}",
            std::process::id(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        // The owner file only improves the "in use" message; failing to write it is harmless.
        let _ = write_private(&path.join(OWNER_FILE), owner.as_bytes());
        // sled made its files with the process's umask; they hold people's data.
        state.make_private()?;
        Ok(state)
    }

    /// The state directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every user record and failure record, without the users' pushed attributes
    /// (see [`State::load_pushed`]): a snapshot of 100,000 users stays small.
    ///
    /// # Errors
    /// [`StateError::Storage`] when a record cannot be read or decoded.
    pub fn snapshot(&self) -> Result<Snapshot, StateError> {
        // sled iterates in key order; collected, the map is built in bulk with full nodes
        // (inserting one by one leaves them half empty: ~10 MB more for 100,000 users).
        let mut users = Vec::with_capacity(self.users.len());
        for item in self.users.iter() {
            let (key, value) = item.map_err(|error| self.storage(error))?;
            let head: Head = self.decode(&key, &value)?;
            users.push((
                id_of(&key),
                KnownUser {
                    scim_id: head.scim_id,
                    user_name: head.user_name,
                    status: head.status,
                    digest: head.digest,
                    pushed_digest: head.pushed_digest,
                    not_kept: head.not_kept,
                    unconfirmed: head.unconfirmed,
                    normal: head.normal,
                    pushed: None,
                },
            ));
        }
        let mut snapshot = Snapshot {
            users: users.into_iter().collect(),
            ..Snapshot::default()
        };
        for item in self.failures.iter() {
            let (key, value) = item.map_err(|error| self.storage(error))?;
            let record: FailureRecord = self.decode(&key, &value)?;
            snapshot.failures.insert(id_of(&key), record);
        }
        Ok(snapshot)
    }

    /// Loads the pushed attributes of these users into the snapshot (users without a record
    /// are left out).
    ///
    /// # Errors
    /// [`StateError::Storage`] when a record cannot be read or decoded.
    pub fn load_pushed(&self, snapshot: &mut Snapshot, ids: &[IdpId]) -> Result<(), StateError> {
        for idp_id in ids {
            if let Some(known) = snapshot.users.get_mut(idp_id) {
                known.pushed = Some(Arc::new(self.pushed_of(idp_id)?));
            }
        }
        Ok(())
    }

    /// Records that these users' stored attributes are what their current digest maps to
    /// (the planner compared them), so that the next run need not map them again, and drops
    /// the stored attributes the mapping no longer manages. Users whose record is gone or
    /// inactive are left alone.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn refresh_digests(
        &self,
        refresh: &[(IdpId, Digest)],
        managed: &[String],
    ) -> Result<(), StateError> {
        for (idp_id, digest) in refresh {
            if let Some(mut record) = self.user(idp_id)?
                && record.status == AccountStatus::Active
                && record.digest != Some(*digest)
            {
                record.digest = Some(*digest);
                // Attributes that left the mapping are no longer ours: not kept in the state.
                record.pushed.retain(|name, _| managed.contains(name));
                record.not_kept.retain(|name| managed.contains(name));
                record.unconfirmed.retain(|name| managed.contains(name));
                record.normal.retain(|name, _| managed.contains(name));
                self.write_user(idp_id, Head::of(&record), &record.pushed)?;
            }
        }
        Ok(())
    }

    /// Records what the read-back found of the attributes SocialTalent keeps for these users
    /// (the record's `not_kept` and `unconfirmed`); their attributes and digests stay.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn record_keeping(&self, keeping: &[(IdpId, Keeping)]) -> Result<(), StateError> {
        for (idp_id, keeping) in keeping {
            let key = idp_id.0.as_bytes();
            if let Some(old) = self.users.get(key).map_err(|e| self.storage(e))? {
                let mut head: Head = self.decode(key, &old)?;
                head.not_kept = keeping.not_kept.clone();
                head.unconfirmed = keeping.unconfirmed.clone();
                head.normal = keeping.normal.clone();
                let value = serde_json::to_vec(&head).map_err(|e| self.storage(e))?;
                self.users.insert(key, value).map_err(|e| self.storage(e))?;
            }
        }
        Ok(())
    }

    /// One user's record.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn user(&self, idp_id: &IdpId) -> Result<Option<UserRecord>, StateError> {
        let Some(value) = self
            .users
            .get(idp_id.0.as_bytes())
            .map_err(|e| self.storage(e))?
        else {
            return Ok(None);
        };
        let head: Head = self.decode(idp_id.0.as_bytes(), &value)?;
        Ok(Some(UserRecord {
            scim_id: head.scim_id,
            user_name: head.user_name,
            pushed: self.pushed_of(idp_id)?,
            status: head.status,
            updated_at: head.updated_at,
            digest: head.digest,
            pushed_digest: head.pushed_digest,
            not_kept: head.not_kept,
            unconfirmed: head.unconfirmed,
            normal: head.normal,
        }))
    }

    /// A user's pushed attributes.
    fn pushed_of(&self, idp_id: &IdpId) -> Result<crate::model::Attributes, StateError> {
        let key = idp_id.0.as_bytes();
        match self.pushed.get(key).map_err(|e| self.storage(e))? {
            Some(value) => self.decode(key, &value),
            None => Err(self.storage(format!(
                "the record of {idp_id} has no attributes in the `pushed` tree"
            ))),
        }
    }

    /// Converts version-1 records (attributes inline) to version 2. Each user's attributes
    /// are written before its record shrinks, so an interrupted conversion is simply done
    /// again on the next open.
    fn split_records(&self) -> Result<(), StateError> {
        for item in self.users.iter() {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            let inline: serde_json::Value = self.decode(&key, &value)?;
            if inline.get("pushed").is_none() {
                continue;
            }
            let record: UserRecord = self.decode(&key, &value)?;
            self.write_user(&id_of(&key), Head::of(&record), &record.pushed)?;
        }
        Ok(())
    }

    /// Records a write SocialTalent confirmed, and clears the user's failure count.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn record_success(&self, idp_id: &IdpId, record: &UserRecord) -> Result<(), StateError> {
        self.write_user(idp_id, Head::of(record), &record.pushed)?;
        self.clear_failures(idp_id)
    }

    /// Records that SocialTalent confirmed `pushed` as the attributes of the user's active
    /// account `scim_id` (a create, adoption, update or reactivation), with the digest of the
    /// source user and mapping they come from and what is known of the attributes the target
    /// kept ([`Keeping`]), and clears the user's failure count.
    ///
    /// The user's record must hold no digest: a record that has one loses it with
    /// [`State::forget_digest`] before its write is sent (the executor does so for every
    /// action of a plan at once). Otherwise a crash between the two writes here could leave the
    /// old digest over the new attributes, and a later run take the user for unchanged.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn record_active(
        &self,
        idp_id: &IdpId,
        scim_id: &str,
        user_name: &str,
        pushed: &Attributes,
        digest: Option<Digest>,
        keeping: &Keeping,
    ) -> Result<(), StateError> {
        let head = Head {
            scim_id: scim_id.to_owned(),
            user_name: user_name.to_owned(),
            status: AccountStatus::Active,
            updated_at: now_rfc3339(),
            digest,
            pushed_digest: None,
            not_kept: keeping.not_kept.clone(),
            unconfirmed: keeping.unconfirmed.clone(),
            normal: keeping.normal.clone(),
        };
        self.write_attributes_then_head(idp_id, head, pushed)?;
        self.clear_failures(idp_id)
    }

    /// Drops the digest of a user's record, if it has one, so that no run takes the user for
    /// unchanged while its attributes are being replaced (see [`State::record_active`]). A
    /// record without a digest is mapped and compared on the next run.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn forget_digest(&self, idp_id: &IdpId) -> Result<(), StateError> {
        let key = idp_id.0.as_bytes();
        if let Some(old) = self.users.get(key).map_err(|e| self.storage(e))? {
            let mut head: Head = self.decode(key, &old)?;
            if head.digest.is_some() {
                head.digest = None;
                let value = serde_json::to_vec(&head).map_err(|e| self.storage(e))?;
                self.users.insert(key, value).map_err(|e| self.storage(e))?;
            }
        }
        Ok(())
    }

    fn clear_failures(&self, idp_id: &IdpId) -> Result<(), StateError> {
        if self.failures_present.load(Ordering::Relaxed) {
            self.failures
                .remove(idp_id.0.as_bytes())
                .map_err(|e| self.storage(e))?;
        }
        Ok(())
    }

    /// Writes a user record, with the digest of its attributes.
    ///
    /// Three plain writes, in an order that a crash between any two leaves safe (sled's
    /// atomic batches and transactions lock out every other write, and made creates 2.7 times
    /// slower): first an existing record loses its digest ([`State::forget_digest`]); then the
    /// attributes; then the record with both digests.
    fn write_user(
        &self,
        idp_id: &IdpId,
        head: Head,
        pushed: &Attributes,
    ) -> Result<(), StateError> {
        self.forget_digest(idp_id)?;
        self.write_attributes_then_head(idp_id, head, pushed)
    }

    /// The last two writes of [`State::write_user`], for a record known to hold no digest.
    fn write_attributes_then_head(
        &self,
        idp_id: &IdpId,
        mut head: Head,
        pushed: &Attributes,
    ) -> Result<(), StateError> {
        head.pushed_digest = Some(attributes_digest(pushed));
        let key = idp_id.0.as_bytes();
        let pushed = serde_json::to_vec(pushed).map_err(|e| self.storage(e))?;
        self.pushed
            .insert(key, pushed)
            .map_err(|e| self.storage(e))?;
        let value = serde_json::to_vec(&head).map_err(|e| self.storage(e))?;
        self.users.insert(key, value).map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// Counts one more failed run for a user; returns the new consecutive count.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn record_failure(
        &self,
        idp_id: &IdpId,
        label: &str,
        error: &str,
    ) -> Result<u32, StateError> {
        let previous: Option<FailureRecord> = match self
            .failures
            .get(idp_id.0.as_bytes())
            .map_err(|e| self.storage(e))?
        {
            Some(value) => Some(self.decode(idp_id.0.as_bytes(), &value)?),
            None => None,
        };
        let record = FailureRecord {
            consecutive: previous.map_or(0, |p| p.consecutive).saturating_add(1),
            // A last line of defence: the message was built from scrubbed answers already.
            last_error: crate::net::redact::scrub(error).into_owned(),
            label: label.to_owned(),
            last_failed_at: now_rfc3339(),
        };
        let value = serde_json::to_vec(&record).map_err(|e| self.storage(e))?;
        self.failures_present.store(true, Ordering::Relaxed);
        self.failures
            .insert(idp_id.0.as_bytes(), value)
            .map_err(|e| self.storage(e))?;
        Ok(record.consecutive)
    }

    /// Appends a run to the history, keeping the last [`RUNS_KEPT`].
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn record_run(&self, run: &RunRecord) -> Result<(), StateError> {
        let id = self.db.generate_id().map_err(|e| self.storage(e))?;
        let value = serde_json::to_vec(run).map_err(|e| self.storage(e))?;
        // A last line of defence: the run's messages were built from scrubbed answers already.
        let value = scrubbed_json(&value).unwrap_or(value);
        self.runs
            .insert(id.to_be_bytes(), value)
            .map_err(|e| self.storage(e))?;
        while self.runs.len() > RUNS_KEPT {
            if self.runs.pop_min().map_err(|e| self.storage(e))?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// The most recent runs, newest first.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let mut runs = Vec::new();
        for item in self.runs.iter().rev().take(limit) {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            // Scrubbed again on the way out: the redaction step may know more secrets now than
            // when the record was stored or the state was opened.
            match scrubbed_json(&value) {
                Some(clean) => runs.push(self.decode(&key, &clean)?),
                None => runs.push(self.decode(&key, &value)?),
            }
        }
        Ok(runs)
    }

    /// The deactivations held and still pending (see [`crate::holds`]).
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn pending_holds(&self) -> Result<Vec<HeldEntry>, StateError> {
        match self.meta.get(PENDING_HOLDS).map_err(|e| self.storage(e))? {
            Some(value) => self.decode(PENDING_HOLDS.as_bytes(), &value),
            None => Ok(Vec::new()),
        }
    }

    /// Replaces the pending holds.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn set_pending_holds(&self, pending: &[HeldEntry]) -> Result<(), StateError> {
        let value = serde_json::to_vec(pending).map_err(|e| self.storage(e))?;
        self.meta
            .insert(PENDING_HOLDS, value)
            .map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// A metadata value (cursors, watermarks).
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self
            .meta
            .get(key)
            .map_err(|e| self.storage(e))?
            .map(|value| String::from_utf8_lossy(&value).into_owned()))
    }

    /// Sets a metadata value.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.meta
            .insert(key, value.as_bytes())
            .map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// The cached source record of one user (Okta and Entra ID keep the directory here so that
    /// incremental reads can resolve managers and groups and retry failing users).
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn cached_source_user(&self, idp_id: &IdpId) -> Result<Option<SourceUser>, StateError> {
        match self
            .source
            .get(idp_id.0.as_bytes())
            .map_err(|e| self.storage(e))?
        {
            Some(value) => Ok(Some(self.decode(idp_id.0.as_bytes(), &value)?)),
            None => Ok(None),
        }
    }

    /// The cached source users who are in the group `name` (for a renamed or deleted group: the
    /// members its old name reached, without a request to the IdP). Records that cannot hold
    /// the name are skipped before they are decoded.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn cached_members_of(&self, name: &str) -> Result<Vec<SourceUser>, StateError> {
        let needle = serde_json::to_string(name).map_err(|e| self.storage(e))?;
        let finder = memchr::memmem::Finder::new(needle.as_bytes());
        let mut members = Vec::new();
        for item in self.source.iter() {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            if finder.find(&value).is_none() {
                continue;
            }
            let user: SourceUser = self.decode(&key, &value)?;
            if user.groups.iter().any(|group| group == name) {
                members.push(user);
            }
        }
        Ok(members)
    }

    /// Applies a source's commit: its cache changes (one batch), its tables (one batch each),
    /// then its cursors, so that a cursor never runs ahead of what it read.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn apply_source_commit(&self, commit: &SourceCommit) -> Result<(), StateError> {
        let encode = |user: &SourceUser| serde_json::to_vec(user).map_err(|e| self.storage(e));
        match &commit.cache {
            CacheUpdate::Keep => {}
            CacheUpdate::Replace(users) => {
                let mut batch = sled::Batch::default();
                let wanted: std::collections::HashSet<&[u8]> =
                    users.iter().map(|user| user.id.0.as_bytes()).collect();
                for item in self.source.iter().keys() {
                    let key = item.map_err(|e| self.storage(e))?;
                    if !wanted.contains(key.as_ref()) {
                        batch.remove(key);
                    }
                }
                for user in users {
                    let value = encode(user)?;
                    // Rewriting an unchanged record costs a write; skip it.
                    let unchanged = self
                        .source
                        .get(user.id.0.as_bytes())
                        .map_err(|e| self.storage(e))?
                        .is_some_and(|old| old.as_ref() == value.as_slice());
                    if !unchanged {
                        batch.insert(user.id.0.as_bytes(), value);
                    }
                }
                self.source
                    .apply_batch(batch)
                    .map_err(|e| self.storage(e))?;
            }
            CacheUpdate::Merge { upsert, remove } => {
                let mut batch = sled::Batch::default();
                for user in upsert {
                    batch.insert(user.id.0.as_bytes(), encode(user)?);
                }
                for idp_id in remove {
                    batch.remove(idp_id.0.as_bytes());
                }
                self.source
                    .apply_batch(batch)
                    .map_err(|e| self.storage(e))?;
            }
        }
        for table in &commit.tables {
            self.apply_table(table)?;
        }
        for (key, value) in &commit.cursors {
            self.set_meta(key, value)?;
        }
        Ok(())
    }

    /// Applies one table change to the `meta` tree; an entry that holds the same value already
    /// is not written again.
    fn apply_table(&self, table: &TableUpdate) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        match table {
            TableUpdate::Replace { prefix, entries } => {
                let wanted: std::collections::HashMap<&[u8], &[u8]> = entries
                    .iter()
                    .map(|(key, value)| (key.as_bytes(), value.as_bytes()))
                    .collect();
                let mut unchanged = std::collections::HashSet::new();
                for item in self.meta.scan_prefix(prefix.as_bytes()) {
                    let (key, value) = item.map_err(|e| self.storage(e))?;
                    let rest = &key[prefix.len()..];
                    match wanted.get(rest) {
                        Some(new) if *new == value.as_ref() => {
                            unchanged.insert(rest.to_vec());
                        }
                        Some(_) => {}
                        None => batch.remove(key),
                    }
                }
                for (key, value) in entries {
                    if !unchanged.contains(key.as_bytes()) {
                        batch.insert(format!("{prefix}{key}").as_bytes(), value.as_bytes());
                    }
                }
            }
            TableUpdate::Merge {
                prefix,
                set,
                remove,
            } => {
                for (key, value) in set {
                    batch.insert(format!("{prefix}{key}").as_bytes(), value.as_bytes());
                }
                for key in remove {
                    batch.remove(format!("{prefix}{key}").as_bytes());
                }
            }
        }
        self.meta.apply_batch(batch).map_err(|e| self.storage(e))
    }

    /// Writes everything to disk.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map_err(|e| self.storage(e))?;
        // sled may have made a new file (a snapshot) since the last flush.
        self.make_private()
    }

    /// Sets every file under the state directory to 0600 and every directory to 0700.
    fn make_private(&self) -> Result<(), StateError> {
        make_private(&self.path).map_err(|e| self.storage(e))
    }

    /// Rewrites every stored run and failure record without what the redaction step removes
    /// (records stored by a version whose redaction missed something).
    fn scrub_records(&self) -> Result<(), StateError> {
        let mut scrubbed = 0_usize;
        for tree in [&self.runs, &self.failures] {
            for item in tree.iter() {
                let (key, value) = item.map_err(|e| self.storage(e))?;
                if let Some(clean) = scrubbed_json(&value) {
                    tree.insert(key, clean).map_err(|e| self.storage(e))?;
                    scrubbed += 1;
                }
            }
        }
        if scrubbed > 0 {
            tracing::info!(
                message = "Removed credentials from stored run and failure records.",
                records = scrubbed
            );
        }
        Ok(())
    }

    /// The state's size on disk, in bytes.
    ///
    /// # Errors
    /// [`StateError::Storage`].
    pub fn size_on_disk(&self) -> Result<u64, StateError> {
        self.db.size_on_disk().map_err(|e| self.storage(e))
    }

    fn meta_u32(&self, key: &str) -> Result<Option<u32>, StateError> {
        match self.meta(key)? {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| StateError::Storage {
                path: self.path.clone(),
                message: format!("meta key {key} holds {text:?}, not a number"),
            }),
        }
    }

    fn storage(&self, error: impl std::fmt::Display) -> StateError {
        StateError::Storage {
            path: self.path.clone(),
            message: error.to_string(),
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<T, StateError> {
        serde_json::from_slice(value).map_err(|error| StateError::Storage {
            path: self.path.clone(),
            message: format!(
                "record {} cannot be decoded: {error}",
                String::from_utf8_lossy(key)
            ),
        })
    }
}

fn id_of(key: &[u8]) -> IdpId {
    IdpId(String::from_utf8_lossy(key).into_owned())
}

/// Creates `path` (and its parents) with the state directory made 0700 whatever the umask.
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        result => result,
    }
}

/// The permission bits of the state directory at `path` when group or others have any.
pub fn open_to_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Sets everything under `dir` (not `dir` itself, whose mode the administrator may have
/// chosen) private: files 0600, directories 0700.
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // sled may remove a file (an old snapshot) while this walks: a vanished entry is skipped.
    let gone = |result: std::io::Result<()>| match result {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        gone((|| {
            let kind = entry.file_type()?;
            let wanted = if kind.is_dir() {
                make_private(&entry.path())?;
                0o700
            } else if kind.is_file() {
                0o600
            } else {
                return Ok(());
            };
            let mode = entry.metadata()?.permissions().mode() & 0o7777;
            if mode != wanted {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(wanted))?;
            }
            Ok(())
        })())?;
    }
    Ok(())
}

/// Writes a file readable by its owner only, whatever the umask.
fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)
}

/// A stored JSON record with every string scrubbed by the redaction step, when that changed
/// anything.
fn scrubbed_json(value: &[u8]) -> Option<Vec<u8>> {
    fn walk(value: &mut serde_json::Value, changed: &mut bool) {
        match value {
            serde_json::Value::String(text) => {
                if let std::borrow::Cow::Owned(clean) = crate::net::redact::scrub(text) {
                    *text = clean;
                    *changed = true;
                }
            }
            serde_json::Value::Array(items) => {
                items.iter_mut().for_each(|item| walk(item, changed))
            }
            serde_json::Value::Object(members) => {
                members
                    .values_mut()
                    .for_each(|member| walk(member, changed));
            }
            _ => {}
        }
    }
    let mut parsed: serde_json::Value = serde_json::from_slice(value).ok()?;
    let mut changed = false;
    walk(&mut parsed, &mut changed);
    changed.then(|| serde_json::to_vec(&parsed).ok()).flatten()
}

fn open_error(path: &Path, error: sled::Error) -> StateError {
    let text = error.to_string();
    let locked = match &error {
        sled::Error::Io(io) => io.kind() == std::io::ErrorKind::WouldBlock || text.contains("lock"),
        _ => false,
    };
    if locked {
        let owner = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty());
        StateError::Locked {
            path: path.to_owned(),
            owner,
        }
    } else {
        StateError::Storage {
            path: path.to_owned(),
            message: text,
        }
    }
}

/// The current time as RFC 3339 (seconds, UTC).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests;
