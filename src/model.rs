//! The values that flow through the pure core: the IdP-neutral [`SourceUser`] that templates see
//! as `user`, what a source read returns ([`SourceRead`]), and the mapped [`Attributes`] that the
//! planner compares. Nothing here knows Okta, Graph or SCIM JSON.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The IdP's stable identifier of a user (Okta `id`, Graph `id`, the file's `id` column).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdpId(pub String);

impl fmt::Display for IdpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for IdpId {
    fn from(value: &str) -> Self {
        IdpId(value.to_owned())
    }
}

/// Which kind of source produced a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The Okta Management API.
    Okta,
    /// Microsoft Entra ID through Microsoft Graph.
    Entra,
    /// OneLogin's API v2.
    #[serde(rename = "onelogin")]
    OneLogin,
    /// A local JSON or CSV export.
    File,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Okta => "okta",
            SourceKind::Entra => "entra",
            SourceKind::OneLogin => "onelogin",
            SourceKind::File => "file",
        })
    }
}

/// The manager of a user, as templates see `user.manager`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagerRef {
    /// The manager's IdP id.
    pub id: IdpId,
    /// The manager's login, when known.
    pub login: Option<String>,
    /// The manager's email, when known.
    pub email: Option<String>,
    /// The manager's display name, when known.
    pub display_name: Option<String>,
}

/// One IdP user in the same shape for every source (SPEC §4, "Templates see one variable").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceUser {
    /// The IdP's id.
    pub id: IdpId,
    /// Okta `profile.login`, Graph `userPrincipalName`, the file's `login`.
    pub login: Option<String>,
    /// The user's email.
    pub email: Option<String>,
    /// Given name.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// Display name.
    pub display_name: Option<String>,
    /// Whether the IdP considers the person employed and able to sign in.
    pub active: bool,
    /// The IdP's own status word (for example `ACTIVE`, `SUSPENDED`, `enabled`).
    pub status: Option<String>,
    /// Department.
    pub department: Option<String>,
    /// Job title.
    pub title: Option<String>,
    /// Employee number.
    pub employee_id: Option<String>,
    /// The manager's IdP id as the source gave it (before resolution).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager_id: Option<IdpId>,
    /// The resolved manager, or none when the user has none or it matched nobody (shared by
    /// all of the manager's reports).
    pub manager: Option<std::sync::Arc<ManagerRef>>,
    /// Group names (already narrowed by `[source.*] groups`).
    pub groups: Vec<String>,
    /// Every attribute the source returned, by its source name.
    pub attrs: Attrs,
}

impl SourceUser {
    /// The best human label for messages: login, else email, else the id.
    pub fn label(&self) -> &str {
        self.login
            .as_deref()
            .or(self.email.as_deref())
            .unwrap_or(&self.id.0)
    }

    /// This user as a manager reference.
    pub fn as_manager(&self) -> std::sync::Arc<ManagerRef> {
        std::sync::Arc::new(ManagerRef {
            id: self.id.clone(),
            login: self.login.clone(),
            email: self.email.clone(),
            display_name: self.display_name.clone(),
        })
    }
}

/// A source user's raw attributes (`user.attrs`), kept as compact JSON text: about a tenth of
/// the memory of a parsed map, and parsed only when a template or write-back looks inside.
#[derive(Clone, PartialEq, Eq)]
pub struct Attrs(Box<str>);

impl Attrs {
    /// No attributes.
    pub fn empty() -> Attrs {
        Attrs("{}".into())
    }

    /// Attributes from a parsed map.
    pub fn from_map(map: &serde_json::Map<String, Value>) -> Attrs {
        // Serialising a map of JSON values cannot fail (its keys are strings).
        Attrs(
            serde_json::to_string(map)
                .unwrap_or_else(|_| "{}".to_owned())
                .into(),
        )
    }

    /// Attributes from the text of a JSON object (for example a record a parser just
    /// accepted, compacted), kept as it is once [`check_json`] accepts it.
    ///
    /// # Errors
    /// What [`check_json`] finds.
    pub fn from_object_text(text: String) -> Result<Attrs, String> {
        check_json(&text)?;
        Ok(Attrs(text.into_boxed_str()))
    }

    /// Attributes straight from the JSON text of an object, as a source received it: no map is
    /// built and nothing is re-serialised, the text is kept as it is. `Ok(None)` when the value
    /// is not an object.
    ///
    /// The text is not normalised: whitespace between tokens, escapes (`\u00e9` for `é`) and a
    /// repeated key stay as they were sent. Sources send compact JSON, so the text is compact in
    /// practice, and [`Attrs::to_map`] reads any of it as [`Attrs::from_map`]'s text would be
    /// read (a repeated key's last value wins). Only [`Attrs::as_json`], and so
    /// [`SourceUser::digest`], can tell the difference: the same attributes sent differently
    /// have different digests, which costs a user's mapping, never its outcome.
    ///
    /// # Errors
    /// What [`check_json`] finds.
    pub fn from_json_object(
        object: Box<serde_json::value::RawValue>,
    ) -> Result<Option<Attrs>, String> {
        // `RawValue` holds JSON with no whitespace around it, so its first byte says whether
        // it is an object.
        if !object.get().starts_with('{') {
            return Ok(None);
        }
        check_json(object.get())?;
        Ok(Some(Attrs(object.into())))
    }

    /// The attributes as a map (parsed on each call).
    pub fn to_map(&self) -> serde_json::Map<String, Value> {
        // Every constructor checks that the text parses as a map, so this never falls back.
        serde_json::from_str(&self.0).unwrap_or_default()
    }

    /// One attribute (parses the text; for occasional lookups).
    pub fn get(&self, key: &str) -> Option<Value> {
        self.to_map().remove(key)
    }

    /// The compact JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

/// Checks that `text` is a JSON object that parses into a map of values: syntax alone (what
/// a parser skipping unread values checks) lets through a lone surrogate (`"\ud800"`, a
/// truncated emoji) or a number beyond `f64` (`1e400`), and a record holding one would lose
/// every attribute when read. Builds nothing but escaped strings.
///
/// # Errors
/// The parser's message, with line and column.
pub fn check_json(text: &str) -> Result<(), String> {
    serde_json::from_str::<Checked>(text)
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// A JSON value read through every string and number (see [`check_json`]).
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Checked, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

impl Default for Attrs {
    fn default() -> Self {
        Attrs::empty()
    }
}

impl fmt::Debug for Attrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<serde_json::Map<String, Value>> for Attrs {
    fn from(map: serde_json::Map<String, Value>) -> Self {
        Attrs::from_map(&map)
    }
}

impl Serialize for Attrs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Attrs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Map::<String, Value>::deserialize(deserializer).map(|map| Attrs::from_map(&map))
    }
}

/// A 128-bit fingerprint (XXH3) used to tell "unchanged" without keeping or comparing the
/// values themselves. Not a security measure: only equal inputs are expected to collide.
/// Stored as 32 hexadecimal digits. Packed (alignment 1), so that the two digests of each of
/// 100,000 state records do not pad it by 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C, packed)]
pub struct Digest(pub u128);

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let value = self.0;
        serializer.serialize_str(&format!("{value:032x}"))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        u128::from_str_radix(&text, 16)
            .map(Digest)
            .map_err(|_| serde::de::Error::custom(format!("not a digest: {text:?}")))
    }
}

/// The fingerprint of a set of attributes, equal for values [`same_value`] calls the same in
/// the common cases (userName in any case, lists in any order): equal digests mean no
/// attribute differs, different digests mean "compare them".
pub fn attributes_digest<'a>(
    attributes: impl IntoIterator<Item = (&'a String, &'a Value)>,
) -> Digest {
    // Per attribute: its name, then a tagged value: `s` and the lowercased userName, `a` and
    // the list's items as compact JSON in byte order, or `v` and the value as compact JSON.
    // Written without a string per value: this runs once per user written to the state.
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buffer = Vec::with_capacity(256);
    let mut items_text = Vec::new();
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    // Serialising a `Value` into a `Vec` cannot fail (every key is a string).
    let compact = |out: &mut Vec<u8>, value: &Value| {
        let _ = serde_json::to_writer(out, value);
    };
    for (name, value) in attributes {
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        buffer.clear();
        match value {
            Value::String(text) if name == attr::USER_NAME => {
                buffer.push(b's');
                buffer.extend_from_slice(text.to_lowercase().as_bytes());
            }
            Value::Array(items) => {
                items_text.clear();
                ranges.clear();
                for item in items {
                    let start = items_text.len();
                    compact(&mut items_text, item);
                    ranges.push(start..items_text.len());
                }
                ranges.sort_unstable_by(|a, b| items_text[a.clone()].cmp(&items_text[b.clone()]));
                buffer.push(b'a');
                for range in &ranges {
                    buffer.extend_from_slice(&(range.len() as u64).to_le_bytes());
                    buffer.extend_from_slice(&items_text[range.clone()]);
                }
            }
            other => {
                buffer.push(b'v');
                compact(&mut buffer, other);
            }
        }
        hasher.update(&(buffer.len() as u64).to_le_bytes());
        hasher.update(&buffer);
    }
    Digest(hasher.digest128())
}

impl SourceUser {
    /// This user's fingerprint: every field templates can see, in a fixed order.
    pub fn digest(&self) -> Digest {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut text = |value: Option<&str>| match value {
            Some(text) => {
                hasher.update(&[1]);
                hasher.update(&(text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
            None => hasher.update(&[0]),
        };
        text(Some(&self.id.0));
        text(self.login.as_deref());
        text(self.email.as_deref());
        text(self.given_name.as_deref());
        text(self.family_name.as_deref());
        text(self.display_name.as_deref());
        text(Some(if self.active { "1" } else { "0" }));
        text(self.status.as_deref());
        text(self.department.as_deref());
        text(self.title.as_deref());
        text(self.employee_id.as_deref());
        text(self.manager_id.as_ref().map(|id| id.0.as_str()));
        match &self.manager {
            Some(manager) => {
                text(Some(&manager.id.0));
                text(manager.login.as_deref());
                text(manager.email.as_deref());
                text(manager.display_name.as_deref());
            }
            None => text(None),
        }
        text(Some(&self.groups.len().to_string()));
        for group in &self.groups {
            text(Some(group));
        }
        text(Some(self.attrs.as_json()));
        Digest(hasher.digest128())
    }
}

/// A source record that could not be turned into a [`SourceUser`]; it is skipped and reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedRecord {
    /// The record's id when it could be read; a record without one protects nobody from being
    /// treated as absent, so the planner holds absence-based deactivations in that case.
    pub idp_id: Option<IdpId>,
    /// Where the record is (for example `directory.json record 7` or `line 12`).
    pub location: String,
    /// What is wrong with it.
    pub error: String,
}

/// Everything one read of a source returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRead {
    /// Which source.
    pub kind: SourceKind,
    /// Whether this is a complete listing: then a provisioned user missing from it has left.
    pub full: bool,
    /// The users read (on an incremental read, the changed ones), shared with the mapping.
    pub users: Vec<std::sync::Arc<SourceUser>>,
    /// Users the source reported as removed (incremental reads).
    pub removed: Vec<IdpId>,
    /// Records that could not be read; skipped and reported.
    pub rejected: Vec<RejectedRecord>,
    /// Non-fatal findings (for example a manager id that matches nobody).
    pub warnings: Vec<String>,
    /// Why a user is in an incremental read although it did not change itself (for example
    /// `group renamed: A → B`): shown as the reason of the user's update.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<IdpId, String>,
    /// What to persist once the run's writes are recorded (cursors, the source cache).
    #[serde(skip)]
    pub commit: SourceCommit,
}

/// What a source asks the state to keep after a run: its cursors (Okta watermark, Graph delta
/// link) and its cache of the directory (for incremental reads, which return only changes).
/// Applied only after the run's writes are recorded, and only when the run neither held
/// deactivations nor stopped early, so that nothing read is skipped by the next run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceCommit {
    /// Cursor values by state key.
    pub cursors: Vec<(String, String)>,
    /// Changes to the keyed tables the source keeps beside its cursors; applied before the
    /// cursors.
    pub tables: Vec<TableUpdate>,
    /// Changes to the source cache.
    pub cache: CacheUpdate,
}

/// A change to a table a source keeps in the state beside its cursors: entries under one key
/// prefix, so that a read loads and rewrites only the entries it needs (Entra ID keeps each
/// group's direct members this way). Keys are given without the prefix.
#[derive(Debug, Clone, PartialEq)]
pub enum TableUpdate {
    /// Exactly these entries (after a full read): every other entry under the prefix goes.
    Replace {
        /// The key prefix.
        prefix: String,
        /// The entries, by key after the prefix.
        entries: Vec<(String, String)>,
    },
    /// Set these entries and remove those keys (after an incremental read).
    Merge {
        /// The key prefix.
        prefix: String,
        /// Entries set, by key after the prefix.
        set: Vec<(String, String)>,
        /// Keys removed (after the prefix).
        remove: Vec<String>,
    },
}

/// A change to the source cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum CacheUpdate {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Replace it with exactly these users (after a full read).
    Replace(Vec<std::sync::Arc<SourceUser>>),
    /// Insert or replace these users and forget those ids (after an incremental read).
    Merge {
        /// Users read.
        upsert: Vec<std::sync::Arc<SourceUser>>,
        /// Users gone.
        remove: Vec<IdpId>,
    },
}

impl SourceRead {
    /// How many user records the read produced, good or bad.
    pub fn records_read(&self) -> usize {
        self.users.len() + self.rejected.len() + self.removed.len()
    }
}

/// Mapped SCIM attributes by their mapping name (`userName`, `name.givenName`, `coreTeam`,
/// `udf_Customer_ID`, …). Only non-empty values are present: an absent key means "not set".
/// Multi-valued values are JSON arrays kept sorted and without duplicates, so that equal sets
/// are equal values.
pub type Attributes = BTreeMap<String, Value>;

/// Attribute names the planner treats specially.
pub mod attr {
    /// The SCIM `userName`; compared case-insensitively.
    pub const USER_NAME: &str = "userName";
    /// The SCIM `externalId`; the IdP id unless mapped otherwise.
    pub const EXTERNAL_ID: &str = "externalId";
    /// SocialTalent's core team; mandatory on create.
    pub const CORE_TEAM: &str = "coreTeam";
    /// SocialTalent's role; mandatory on create, one of [`ROLES`].
    pub const ROLE: &str = "role";
    /// The roles SocialTalent accepts.
    pub const ROLES: [&str; 3] = ["user", "advisor", "company_admin"];
}

/// Whether two values of `attribute` mean the same: `userName` ignores case, arrays compare as
/// sets, and everything else compares exactly.
pub fn same_value(attribute: &str, left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::String(a), Value::String(b)) if attribute == attr::USER_NAME => {
            a.to_lowercase() == b.to_lowercase()
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
        }
        _ => left == right,
    }
}

/// Lower-cases a `userName` for case-insensitive lookups (RFC 7643 `caseExact: false`).
pub fn fold_user_name(user_name: &str) -> String {
    user_name.to_lowercase()
}

/// A SocialTalent account as read back from SCIM, in mapping form.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetUser {
    /// SocialTalent's id.
    pub id: String,
    /// `userName`.
    pub user_name: String,
    /// `externalId`, when set.
    pub external_id: Option<String>,
    /// `active` (absent counts as active, as RFC 7643 leaves it to the provider).
    pub active: bool,
    /// Every readable attribute (core, `name.*`, extension) by mapping name; `emails` and
    /// `phoneNumbers` are the value of their `work` entry (the one the mapping manages).
    pub attributes: Attributes,
    /// Set when the read-back found this account holding exactly what the state says we
    /// pushed for an unchanged user: the fingerprint of its managed attributes. `attributes`
    /// were then dropped to save memory, as nothing in the plan reads them.
    pub compacted: Option<Digest>,
}

/// Whether a provisioned account is active in SocialTalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// Active: the person can sign in.
    Active,
    /// Deactivated by us.
    Deactivated,
}

/// What the state remembers of one provisioned IdP user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    /// SocialTalent's SCIM id.
    pub scim_id: String,
    /// The `userName` last confirmed by SocialTalent.
    pub user_name: String,
    /// The attributes last confirmed by SocialTalent.
    pub pushed: Attributes,
    /// Active or deactivated.
    pub status: AccountStatus,
    /// When this record last changed (RFC 3339).
    pub updated_at: String,
    /// The fingerprint of the mapping and the source user that produced `pushed`
    /// ([`crate::mapping::Mapper::digest_of`]): while it matches, the user is unchanged and
    /// is not mapped again. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// The fingerprint of `pushed` ([`attributes_digest`]); the state sets it on every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_digest: Option<Digest>,
    /// Managed attributes of `pushed` that SocialTalent did not keep (the write's answer, or
    /// a later read, lacked them): not sent again while their mapped value stays the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_kept: Vec<String>,
    /// Managed attributes last written without an answer to judge by (a `PATCH` answered
    /// `204`): the next read-back decides whether SocialTalent kept them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unconfirmed: Vec<String>,
    /// Managed attributes SocialTalent keeps in its own form: the value it holds for what we
    /// sent (which is in `pushed`), e.g. another case or spacing. Confirmed, not sent again, and
    /// not taken for drift while SocialTalent holds that form and the mapped value stays what
    /// we sent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub normal: BTreeMap<String, Value>,
}

/// What a write taught about the attributes SocialTalent keeps (see [`UserRecord::not_kept`]
/// and [`UserRecord::unconfirmed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keeping {
    /// Attributes the target did not keep.
    pub not_kept: Vec<String>,
    /// Attributes written without an answer to judge by.
    pub unconfirmed: Vec<String>,
    /// Attributes the target holds in its own form: that form (see [`UserRecord::normal`]).
    pub normal: BTreeMap<String, Value>,
}

/// One provisioned IdP user as the planner sees it: a [`UserRecord`] whose attributes are
/// loaded only when the run needs them (a snapshot holds 100,000 of these).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnownUser {
    /// SocialTalent's SCIM id.
    pub scim_id: String,
    /// The `userName` last confirmed by SocialTalent.
    pub user_name: String,
    /// Active or deactivated.
    pub status: AccountStatus,
    /// See [`UserRecord::digest`].
    pub digest: Option<Digest>,
    /// See [`UserRecord::pushed_digest`].
    pub pushed_digest: Option<Digest>,
    /// See [`UserRecord::not_kept`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_kept: Vec<String>,
    /// See [`UserRecord::unconfirmed`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unconfirmed: Vec<String>,
    /// See [`UserRecord::normal`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub normal: BTreeMap<String, Value>,
    /// The attributes last confirmed by SocialTalent, when loaded
    /// ([`crate::state::State::load_pushed`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushed: Option<std::sync::Arc<Attributes>>,
}

impl From<UserRecord> for KnownUser {
    fn from(record: UserRecord) -> Self {
        KnownUser {
            scim_id: record.scim_id,
            user_name: record.user_name,
            status: record.status,
            digest: record.digest,
            pushed_digest: record.pushed_digest,
            not_kept: record.not_kept,
            unconfirmed: record.unconfirmed,
            normal: record.normal,
            pushed: Some(std::sync::Arc::new(record.pushed)),
        }
    }
}

/// Consecutive failed runs of one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// How many runs in a row failed for this user.
    pub consecutive: u32,
    /// The last error.
    pub last_error: String,
    /// The user's label at the time.
    pub label: String,
    /// When it last failed (RFC 3339).
    pub last_failed_at: String,
}

/// The state as the planner sees it: every provisioned user and every failing one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Provisioned users by IdP id.
    pub users: BTreeMap<IdpId, KnownUser>,
    /// Users whose last writes failed, by IdP id.
    pub failures: BTreeMap<IdpId, FailureRecord>,
}

impl Snapshot {
    /// How many accounts the state holds as active.
    pub fn active_count(&self) -> usize {
        self.users
            .values()
            .filter(|record| record.status == AccountStatus::Active)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_name_compares_case_insensitively() {
        assert!(same_value(
            attr::USER_NAME,
            &json!("Ana.Li@Example.com"),
            &json!("ana.li@example.com")
        ));
        assert!(!same_value(
            "title",
            &json!("Recruiter"),
            &json!("recruiter")
        ));
    }

    #[test]
    fn arrays_compare_as_sets() {
        assert!(same_value(
            "learningPaths",
            &json!(["B", "A"]),
            &json!(["A", "B"])
        ));
        assert!(!same_value(
            "learningPaths",
            &json!(["A"]),
            &json!(["A", "B"])
        ));
    }

    /// The digest as states already hold it (written by earlier versions, which built a
    /// string per value): the stored digests must keep matching.
    fn digest_as_first_written(attributes: &Attributes) -> Digest {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (name, value) in attributes {
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            let mut buffer = Vec::new();
            match value {
                Value::String(text) if name == attr::USER_NAME => {
                    buffer.extend_from_slice(b"s");
                    buffer.extend_from_slice(text.to_lowercase().as_bytes());
                }
                Value::Array(items) => {
                    let mut items: Vec<String> = items.iter().map(Value::to_string).collect();
                    items.sort_unstable();
                    buffer.extend_from_slice(b"a");
                    for item in items {
                        buffer.extend_from_slice(&(item.len() as u64).to_le_bytes());
                        buffer.extend_from_slice(item.as_bytes());
                    }
                }
                other => {
                    buffer.extend_from_slice(b"v");
                    buffer.extend_from_slice(other.to_string().as_bytes());
                }
            }
            hasher.update(&(buffer.len() as u64).to_le_bytes());
            hasher.update(&buffer);
        }
        Digest(hasher.digest128())
    }

    #[test]
    fn attribute_digests_match_the_ones_states_hold() {
        let attributes: Attributes = serde_json::from_value(json!({
            "userName": "Ana.Li@Example.com",
            "name.givenName": "Ana \"Née\" Lí",
            "learningPaths": ["Sales 101", "Onboarding", {"nested": [2, 1]}, "Ética"],
            "teamsToManage": [],
            "udf_costCenter": 4711,
            "active": true,
            "reportsTo": null,
            "title": "Recruiter\n(EMEA) 🚀",
        }))
        .unwrap();
        assert_eq!(
            attributes_digest(&attributes),
            digest_as_first_written(&attributes)
        );
        let mut other = attributes.clone();
        other.insert("learningPaths".into(), json!(["Onboarding", "Sales 101"]));
        assert_ne!(attributes_digest(&other), attributes_digest(&attributes));
        // Lists in any order, userName in any case: the same digest.
        let mut reordered = attributes.clone();
        reordered.insert(
            "learningPaths".into(),
            json!(["Ética", {"nested": [2, 1]}, "Onboarding", "Sales 101"]),
        );
        reordered.insert("userName".into(), json!("ana.li@example.com"));
        assert_eq!(
            attributes_digest(&reordered),
            attributes_digest(&attributes)
        );
    }
}
