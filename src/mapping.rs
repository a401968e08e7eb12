//! The mapping language (SPEC §4): `[scope] when` and the `[mapping]` rules, compiled once with
//! minijinja and applied to one [`SourceUser`] at a time. Pure: values in, values out; a user
//! whose mapping fails gets a [`MappingError`] naming the attribute and the reason.
//!
//! Rule forms: a string is a template (renders to a string); `{ expr }` is an expression whose
//! value is sent as JSON; `{ rules = [{ when, value }], default }` takes the first matching
//! rule's template; `{ from, map, default }` looks a value up in a table. A null or missing
//! source value renders as empty, and an empty result means "not set".

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use minijinja::value::{Enumerator, Object, Value as JinjaValue};
use minijinja::{Environment, Expression, Template, UndefinedBehavior};
use serde_json::Value;

use crate::model::{Attributes, Digest, IdpId, SourceUser, attr};

/// A rule as written in the configuration, before compilation.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleSpec {
    /// A template string.
    Template(String),
    /// `{ expr = "…" }`.
    Expr(String),
    /// `{ rules = [{ when, value }…], default }`.
    Rules {
        /// `(when expression, value template)` pairs, first match wins.
        rules: Vec<(String, String)>,
        /// The template used when no rule matches.
        default: Option<String>,
    },
    /// `{ from = "expr", map = { … }, default }`.
    Lookup {
        /// The expression whose value is looked up.
        from: String,
        /// The table.
        map: BTreeMap<String, String>,
        /// The template used when the value is not in the table (else the attribute is empty).
        default: Option<String>,
    },
}

impl RuleSpec {
    /// Reads a rule from its TOML value.
    ///
    /// # Errors
    /// A message saying which form was expected.
    pub fn from_toml(value: &toml::Value) -> Result<RuleSpec, String> {
        let table = match value {
            toml::Value::String(text) => return Ok(RuleSpec::Template(text.clone())),
            toml::Value::Table(table) => table,
            other => {
                return Err(format!(
                    "expected a template string or a table ({{ expr }}, {{ rules, default }} or {{ from, map, default }}), found a {}",
                    other.type_str()
                ));
            }
        };
        let keys: Vec<&str> = table.keys().map(String::as_str).collect();
        let string = |key: &str| -> Result<Option<String>, String> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::String(text)) => Ok(Some(text.clone())),
                Some(other) => Err(format!(
                    "`{key}` must be a string, found a {}",
                    other.type_str()
                )),
            }
        };
        let only = |allowed: &[&str]| -> Result<(), String> {
            match keys.iter().find(|key| !allowed.contains(key)) {
                Some(key) => Err(format!(
                    "unknown key `{key}` in this rule; expected {}",
                    allowed.join(", ")
                )),
                None => Ok(()),
            }
        };
        if let Some(expr) = string("expr")? {
            only(&["expr"])?;
            return Ok(RuleSpec::Expr(expr));
        }
        if let Some(rules) = table.get("rules") {
            only(&["rules", "default"])?;
            let toml::Value::Array(items) = rules else {
                return Err("`rules` must be an array of { when, value } tables".into());
            };
            let mut pairs = Vec::new();
            for (index, item) in items.iter().enumerate() {
                let toml::Value::Table(rule) = item else {
                    return Err(format!("rules[{index}] must be a {{ when, value }} table"));
                };
                if let Some(key) = rule.keys().find(|key| *key != "when" && *key != "value") {
                    return Err(format!(
                        "rules[{index}]: unknown key `{key}`; expected when, value"
                    ));
                }
                let field = |name: &str| match rule.get(name) {
                    Some(toml::Value::String(text)) => Ok(text.clone()),
                    Some(other) => Err(format!(
                        "rules[{index}].{name} must be a string, found a {}",
                        other.type_str()
                    )),
                    None => Err(format!("rules[{index}] needs `{name}`")),
                };
                pairs.push((field("when")?, field("value")?));
            }
            return Ok(RuleSpec::Rules {
                rules: pairs,
                default: string("default")?,
            });
        }
        if let Some(from) = string("from")? {
            only(&["from", "map", "default"])?;
            let map = match table.get("map") {
                Some(toml::Value::Table(map)) => map
                    .iter()
                    .map(|(key, value)| match value {
                        toml::Value::String(text) => Ok((key.clone(), text.clone())),
                        other => Err(format!(
                            "map.{key} must be a string, found a {}",
                            other.type_str()
                        )),
                    })
                    .collect::<Result<BTreeMap<_, _>, _>>()?,
                Some(_) => {
                    return Err("`map` must be a table of \"source value\" = \"value\"".into());
                }
                None => return Err("a { from } rule needs `map`".into()),
            };
            return Ok(RuleSpec::Lookup {
                from,
                map,
                default: string("default")?,
            });
        }
        Err(format!(
            "a rule table needs `expr`, `rules` or `from` (found keys: {})",
            keys.join(", ")
        ))
    }
}

/// The mapping as written: `[scope] when` plus `(attribute, config key, rule)` triples.
#[derive(Debug, Clone, Default)]
pub struct MappingSpec {
    /// The scope expression; `None` means everyone.
    pub scope: Option<String>,
    /// Each mapped attribute: its SCIM name, its configuration key, and its rule.
    pub rules: Vec<(String, String, RuleSpec)>,
    /// `[writeback] value`: a template that sees `user` and `scim` (`id`, `userName`).
    pub writeback: Option<String>,
}

/// A rule that does not compile.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {message}")]
pub struct CompileError {
    /// The configuration key, for example `mapping.role.rules[0].when`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Why one user could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{attribute}: {reason}")]
pub struct MappingError {
    /// The attribute (or `scope`).
    pub attribute: String,
    /// The reason.
    pub reason: String,
}

/// What the mapping decided for one user.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Active and in scope: provision with these attributes.
    Provision(Arc<Attributes>),
    /// Not active in the IdP.
    Inactive,
    /// Active but outside `[scope] when`.
    OutOfScope,
    /// Active, and the source user and the mapping are exactly as when SocialTalent last
    /// confirmed this user's attributes (their digest matches the state's): the stored
    /// attributes stand and the user was not mapped again.
    Unchanged,
    /// The mapping failed; the user is skipped (and nothing is deactivated for it).
    Failed(Box<MappingError>),
}

/// One user after mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedUser {
    /// The IdP id.
    pub idp_id: IdpId,
    /// A label for messages (login, else email, else id).
    pub label: String,
    /// The manager's IdP id, for ordering creates.
    pub manager: Option<IdpId>,
    /// The fingerprint of this mapping and this source user ([`Mapper::digest_of`]).
    pub digest: Digest,
    /// The decision.
    pub decision: Decision,
}

/// Whether the state holds this digest for this user (see [`Mapper::map_all_unless`]).
pub type Unchanged<'a> = dyn Fn(&IdpId, Digest) -> bool + Sync + 'a;

/// Attributes that hold a list (a template result becomes a one-element list).
pub const MULTI_VALUED: [&str; 2] = ["learningPaths", "teamsToManage"];

/// The compiled mapping.
pub struct Mapper {
    compiled: CompiledCell,
    attributes: Vec<String>,
    /// The fingerprint of everything that decides a user's attributes: the scope, the rules
    /// and this program's version.
    digest: u128,
}

impl std::fmt::Debug for Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapper")
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

enum CompiledRule<'env> {
    Template(Template<'env, 'env>),
    Expr(Expression<'env, 'static>),
    Rules {
        rules: Vec<(Expression<'env, 'static>, Template<'env, 'env>)>,
        default: Option<Template<'env, 'env>>,
    },
    Lookup {
        from: Expression<'env, 'static>,
        map: BTreeMap<String, Template<'env, 'env>>,
        default: Option<Template<'env, 'env>>,
    },
}

struct Compiled<'env> {
    scope: Option<Expression<'env, 'static>>,
    rules: Vec<(String, CompiledRule<'env>)>,
    writeback: Option<Template<'env, 'env>>,
}

/// The configuration key of the write-back template.
const WRITEBACK_KEY: &str = "writeback.value";

self_cell::self_cell!(
    struct CompiledCell {
        owner: Environment<'static>,
        #[not_covariant]
        dependent: Compiled,
    }
);

// The environment and the compiled templates are read-only after construction.
// SAFETY-free note: minijinja's `Environment`, `Template` and `Expression` are `Send + Sync`,
// so the cell is too; the compiler checks this through the auto traits below.
#[allow(dead_code)]
fn assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Mapper>();
}

impl Mapper {
    /// Compiles the scope and every rule.
    ///
    /// # Errors
    /// The first rule that does not compile, with its configuration key.
    pub fn compile(spec: &MappingSpec) -> Result<Mapper, CompileError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_formatter(|out, state, value| {
            if value.is_none() || value.is_undefined() {
                Ok(())
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        let mut names = Vec::new();
        let mut attributes = Vec::new();
        // Templates are registered first (they need `&mut env`), then everything is compiled
        // against the finished environment.
        for (attribute, key, rule) in &spec.rules {
            if attribute.trim().is_empty() {
                return Err(CompileError {
                    key: key.clone(),
                    message: "the attribute name is empty".into(),
                });
            }
            if attributes.contains(attribute) {
                return Err(CompileError {
                    key: key.clone(),
                    message: format!("{attribute} is mapped twice"),
                });
            }
            attributes.push(attribute.clone());
            let mut add = |suffix: String, source: &str| -> Result<String, CompileError> {
                let name = format!("{key}{suffix}");
                env.add_template_owned(name.clone(), source.to_owned())
                    .map_err(|error| CompileError {
                        key: name.clone(),
                        message: format!("template does not compile: {}", describe(&error)),
                    })?;
                Ok(name)
            };
            let mut templates = Vec::new();
            match rule {
                RuleSpec::Template(source) => templates.push(add(String::new(), source)?),
                RuleSpec::Expr(_) => {}
                RuleSpec::Rules { rules, default } => {
                    for (index, (_, value)) in rules.iter().enumerate() {
                        templates.push(add(format!(".rules[{index}].value"), value)?);
                    }
                    if let Some(default) = default {
                        templates.push(add(".default".into(), default)?);
                    }
                }
                RuleSpec::Lookup { map, default, .. } => {
                    for (from, to) in map {
                        templates.push(add(format!(".map.{}", quote(from)), to)?);
                    }
                    if let Some(default) = default {
                        templates.push(add(".default".into(), default)?);
                    }
                }
            }
            names.push(templates);
        }
        if let Some(source) = &spec.writeback {
            env.add_template_owned(WRITEBACK_KEY, source.clone())
                .map_err(|error| CompileError {
                    key: WRITEBACK_KEY.into(),
                    message: format!("template does not compile: {}", describe(&error)),
                })?;
        }
        let compiled = CompiledCell::try_new(env, |env| -> Result<Compiled<'_>, CompileError> {
            let expression = |key: String, source: &str| {
                // minijinja 2.24 panics ("empty lexer stack") on an expression in which `}}`
                // closes the implicit variable block before the end, such as
                // `user.active }} and x`: refuse it like any other syntax error, and keep a
                // backstop in case the engine panics on some other input.
                let stray = || CompileError {
                    key: key.clone(),
                    message: STRAY_BLOCK_END.into(),
                };
                if has_block_end(source) {
                    return Err(stray());
                }
                let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    env.compile_expression_owned(source.to_owned())
                }));
                match compiled {
                    Ok(compiled) => compiled.map_err(|error| CompileError {
                        key: key.clone(),
                        message: format!("expression does not compile: {}", describe(&error)),
                    }),
                    Err(_) => Err(stray()),
                }
            };
            let template = |name: &str| {
                env.get_template(name).map_err(|error| CompileError {
                    key: name.to_owned(),
                    message: describe(&error),
                })
            };
            let scope = spec
                .scope
                .as_deref()
                .map(|source| expression("scope.when".into(), source))
                .transpose()?;
            let mut rules = Vec::new();
            for ((attribute, key, rule), templates) in spec.rules.iter().zip(&names) {
                let mut templates = templates.iter();
                let mut next = || -> Result<Template<'_, '_>, CompileError> {
                    let name = templates.next().ok_or_else(|| CompileError {
                        key: key.clone(),
                        message: "internal: template list out of step".into(),
                    })?;
                    template(name)
                };
                let compiled = match rule {
                    RuleSpec::Template(_) => CompiledRule::Template(next()?),
                    RuleSpec::Expr(source) => {
                        CompiledRule::Expr(expression(format!("{key}.expr"), source)?)
                    }
                    RuleSpec::Rules { rules, default } => {
                        let mut compiled = Vec::new();
                        for (index, (when, _)) in rules.iter().enumerate() {
                            compiled.push((
                                expression(format!("{key}.rules[{index}].when"), when)?,
                                next()?,
                            ));
                        }
                        let default = default.as_ref().map(|_| next()).transpose()?;
                        CompiledRule::Rules {
                            rules: compiled,
                            default,
                        }
                    }
                    RuleSpec::Lookup { from, map, default } => {
                        let from = expression(format!("{key}.from"), from)?;
                        let mut compiled = BTreeMap::new();
                        for source in map.keys() {
                            compiled.insert(source.clone(), next()?);
                        }
                        let default = default.as_ref().map(|_| next()).transpose()?;
                        CompiledRule::Lookup {
                            from,
                            map: compiled,
                            default,
                        }
                    }
                };
                rules.push((attribute.clone(), compiled));
            }
            let writeback = spec
                .writeback
                .as_ref()
                .map(|_| template(WRITEBACK_KEY))
                .transpose()?;
            Ok(Compiled {
                scope,
                rules,
                writeback,
            })
        })?;
        let fingerprint = format!(
            "{} {:?} {:?}",
            env!("CARGO_PKG_VERSION"),
            spec.scope,
            spec.rules
        );
        Ok(Mapper {
            compiled,
            attributes,
            digest: xxhash_rust::xxh3::xxh3_128(fingerprint.as_bytes()),
        })
    }

    /// The fingerprint of `user` under this mapping: equal fingerprints map to equal
    /// attributes (templates are deterministic), so a user whose fingerprint the state holds
    /// need not be mapped again.
    pub fn digest_of(&self, user: &SourceUser) -> Digest {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&self.digest.to_le_bytes());
        let user_digest = user.digest().0;
        bytes[16..].copy_from_slice(&user_digest.to_le_bytes());
        Digest(xxhash_rust::xxh3::xxh3_128(&bytes))
    }

    /// The attributes this mapping manages (`userName` and `externalId` included).
    pub fn attributes(&self) -> Vec<String> {
        let mut attributes = self.attributes.clone();
        for name in [attr::USER_NAME, attr::EXTERNAL_ID] {
            if !attributes.iter().any(|a| a == name) {
                attributes.push(name.to_owned());
            }
        }
        attributes
    }

    /// Decides and maps one user.
    pub fn map(&self, user: &Arc<SourceUser>) -> MappedUser {
        self.map_unless(user, &|_: &IdpId, _: Digest| false)
    }

    /// Decides and maps one user, unless `unchanged` says the state holds its digest (then
    /// [`Decision::Unchanged`]).
    fn map_unless(&self, user: &Arc<SourceUser>, unchanged: &Unchanged<'_>) -> MappedUser {
        let digest = self.digest_of(user);
        if user.active && unchanged(&user.id, digest) {
            return self.unchanged(user, digest);
        }
        self.map_with_digest(user, digest)
    }

    /// An unchanged user: its label is left empty (messages about it use the account's
    /// userName from the state), so that 100,000 of them cost little.
    fn unchanged(&self, user: &SourceUser, digest: Digest) -> MappedUser {
        MappedUser {
            idp_id: user.id.clone(),
            label: String::new(),
            manager: user.manager.as_ref().map(|manager| manager.id.clone()),
            digest,
            decision: Decision::Unchanged,
        }
    }

    fn map_with_digest(&self, user: &Arc<SourceUser>, digest: Digest) -> MappedUser {
        let decision = if user.active {
            let context = user_context(user);
            match self.in_scope(&context) {
                Ok(true) => match self.attributes_of(user, &context) {
                    Ok(attributes) => Decision::Provision(Arc::new(attributes)),
                    Err(error) => Decision::Failed(Box::new(error)),
                },
                Ok(false) => Decision::OutOfScope,
                Err(error) => Decision::Failed(Box::new(error)),
            }
        } else {
            Decision::Inactive
        };
        MappedUser {
            idp_id: user.id.clone(),
            label: user.label().to_owned(),
            manager: user.manager.as_ref().map(|manager| manager.id.clone()),
            digest,
            decision,
        }
    }

    /// Maps every user (in parallel on large inputs; the result keeps the input order).
    pub fn map_all(&self, users: &[Arc<SourceUser>]) -> Vec<MappedUser> {
        self.map_all_unless(users, &|_: &IdpId, _: Digest| false)
    }

    /// Maps every user except those `unchanged` recognises by their digest, which get
    /// [`Decision::Unchanged`] without being mapped. The digests are checked first on this
    /// thread (cheap); the users left are mapped in parallel when there are many. The result
    /// keeps the input order.
    pub fn map_all_unless(
        &self,
        users: &[Arc<SourceUser>],
        unchanged: &Unchanged<'_>,
    ) -> Vec<MappedUser> {
        const PARALLEL_FROM: usize = 2_000;
        // One vector, in input order: the users still to map hold an empty placeholder (no
        // allocation) until their turn, so no second copy of 100,000 entries is ever made.
        let mut mapped: Vec<MappedUser> = Vec::with_capacity(users.len());
        let mut pending: Vec<(usize, Digest)> = Vec::new();
        for (position, user) in users.iter().enumerate() {
            let digest = self.digest_of(user);
            if user.active && unchanged(&user.id, digest) {
                mapped.push(self.unchanged(user, digest));
            } else {
                mapped.push(MappedUser {
                    idp_id: IdpId(String::new()),
                    label: String::new(),
                    manager: None,
                    digest,
                    decision: Decision::Inactive,
                });
                pending.push((position, digest));
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let done: Vec<(usize, MappedUser)> = if pending.len() < PARALLEL_FROM || threads < 2 {
            pending
                .iter()
                .map(|&(position, digest)| {
                    (position, self.map_with_digest(&users[position], digest))
                })
                .collect()
        } else {
            let chunk = pending.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let handles: Vec<_> = pending
                    .chunks(chunk)
                    .map(|part| {
                        scope.spawn(move || {
                            part.iter()
                                .map(|&(position, digest)| {
                                    (position, self.map_with_digest(&users[position], digest))
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|handle| match handle.join() {
                        Ok(mapped) => mapped,
                        // A panic inside minijinja is a bug; re-raise it where it can be seen.
                        Err(panic) => std::panic::resume_unwind(panic),
                    })
                    .collect()
            })
        };
        for (position, user) in done {
            mapped[position] = user;
        }
        mapped
    }

    /// Renders `[writeback] value` for a user whose SocialTalent account is `scim_id`; `None`
    /// when no write-back is configured.
    ///
    /// # Errors
    /// A [`MappingError`] on `writeback` when the template fails.
    pub fn render_writeback(
        &self,
        user: &Arc<SourceUser>,
        scim_id: &str,
        user_name: &str,
    ) -> Option<Result<String, MappingError>> {
        self.compiled.with_dependent(|_, compiled| {
            let template = compiled.writeback.as_ref()?;
            let context = minijinja::context! {
                user => JinjaValue::from_object(UserObject::new(Arc::clone(user))),
                scim => minijinja::context! { id => scim_id, userName => user_name },
            };
            Some(
                template
                    .render(context)
                    .map(|value| value.trim().to_owned())
                    .map_err(|error| MappingError {
                        attribute: "writeback".into(),
                        reason: describe(&error),
                    }),
            )
        })
    }

    /// Whether `[scope] when` holds for the user (true when there is no scope).
    ///
    /// # Errors
    /// A [`MappingError`] on `scope` when the expression fails.
    fn in_scope(&self, context: &JinjaValue) -> Result<bool, MappingError> {
        self.compiled
            .with_dependent(|_, compiled| match &compiled.scope {
                None => Ok(true),
                Some(expression) => expression
                    .eval(context)
                    .map(|value| value.is_true())
                    .map_err(|error| MappingError {
                        attribute: "scope".into(),
                        reason: format!("[scope] when failed: {}", describe(&error)),
                    }),
            })
    }

    fn attributes_of(
        &self,
        user: &SourceUser,
        context: &JinjaValue,
    ) -> Result<Attributes, MappingError> {
        self.compiled.with_dependent(|_, compiled| {
            let mut attributes = Attributes::new();
            for (attribute, rule) in &compiled.rules {
                let fail = |error: minijinja::Error| MappingError {
                    attribute: attribute.clone(),
                    reason: describe(&error),
                };
                let value = match rule {
                    CompiledRule::Template(template) => {
                        Value::String(template.render(context).map_err(fail)?)
                    }
                    CompiledRule::Expr(expression) => {
                        to_json(&expression.eval(context).map_err(fail)?)
                    }
                    CompiledRule::Rules { rules, default } => {
                        let mut chosen = None;
                        for (when, value) in rules {
                            if when.eval(context).map_err(fail)?.is_true() {
                                chosen = Some(value);
                                break;
                            }
                        }
                        match chosen.or(default.as_ref()) {
                            Some(template) => {
                                Value::String(template.render(context).map_err(fail)?)
                            }
                            None => Value::Null,
                        }
                    }
                    CompiledRule::Lookup { from, map, default } => {
                        let key = from.eval(context).map_err(fail)?;
                        let key = if key.is_none() || key.is_undefined() {
                            String::new()
                        } else {
                            key.to_string()
                        };
                        match map.get(&key).or(default.as_ref()) {
                            Some(template) => {
                                Value::String(template.render(context).map_err(fail)?)
                            }
                            None => Value::Null,
                        }
                    }
                };
                if let Some(value) = normalise(attribute, value) {
                    attributes.insert(attribute.clone(), value);
                }
            }
            attributes
                .entry(attr::EXTERNAL_ID.to_owned())
                .or_insert_with(|| Value::String(user.id.0.clone()));
            validate(&attributes)?;
            Ok(attributes)
        })
    }
}

/// Checks what every mapped user must satisfy (the create-only rules live in the planner).
fn validate(attributes: &Attributes) -> Result<(), MappingError> {
    match attributes.get(attr::USER_NAME) {
        Some(Value::String(name)) if !name.is_empty() => {}
        Some(other) => {
            return Err(MappingError {
                attribute: attr::USER_NAME.into(),
                reason: format!("must be a string, found {other}"),
            });
        }
        None => {
            return Err(MappingError {
                attribute: attr::USER_NAME.into(),
                reason: "is empty; every SocialTalent user needs one".into(),
            });
        }
    }
    if let Some(role) = attributes.get(attr::ROLE) {
        let valid = role
            .as_str()
            .is_some_and(|role| attr::ROLES.contains(&role));
        if !valid {
            return Err(MappingError {
                attribute: attr::ROLE.into(),
                reason: format!(
                    "{role} is not a SocialTalent role; expected one of user, advisor, company_admin"
                ),
            });
        }
    }
    Ok(())
}

/// Turns a rendered value into its canonical form, or `None` when it is empty: strings are
/// trimmed, lists lose empty items and become sorted sets, and a multi-valued attribute given a
/// single string becomes a one-element list.
fn normalise(attribute: &str, value: Value) -> Option<Value> {
    let value = match value {
        Value::Null => return None,
        Value::String(text) => {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return None;
            }
            let text = if trimmed.len() == text.len() {
                text
            } else {
                trimmed.to_owned()
            };
            if MULTI_VALUED.contains(&attribute) {
                Value::Array(vec![Value::String(text)])
            } else {
                Value::String(text)
            }
        }
        Value::Array(items) => {
            let mut items: Vec<Value> = items
                .into_iter()
                .filter_map(|item| match item {
                    Value::Null => None,
                    Value::String(text) if text.trim().is_empty() => None,
                    Value::String(text) => Some(Value::String(text.trim().to_owned())),
                    other => Some(other),
                })
                .collect();
            items.sort_by_key(sort_key);
            items.dedup();
            if items.is_empty() {
                return None;
            }
            Value::Array(items)
        }
        other => other,
    };
    Some(value)
}

fn sort_key(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn to_json(value: &JinjaValue) -> Value {
    if value.is_undefined() || value.is_none() {
        return Value::Null;
    }
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn quote(key: &str) -> String {
    format!("\"{key}\"")
}

/// Why an expression holding a stray `}}` is refused.
const STRAY_BLOCK_END: &str = "expression does not compile: syntax error: unexpected `}}` (an expression is written without {{ }})";

/// Whether a standalone expression holds `}}` outside strings with every bracket closed, where
/// minijinja's lexer ends the expression (always a syntax error; minijinja 2.24 panics on it when
/// more text follows).
fn has_block_end(source: &str) -> bool {
    let bytes = source.as_bytes();
    let mut depth: isize = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'}' if depth == 0 && bytes.get(i + 1) == Some(&b'}') => return true,
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    false
}

/// A one-line description of a minijinja error, with its detail but without the template dump.
fn describe(error: &minijinja::Error) -> String {
    let mut message = error.kind().to_string();
    if let Some(detail) = error.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    if let Some(line) = error.line() {
        message.push_str(&format!(" (template line {line})"));
    }
    message
}

/// The minijinja context `{ user }` for one user.
pub fn user_context(user: &Arc<SourceUser>) -> JinjaValue {
    minijinja::context! { user => JinjaValue::from_object(UserObject::new(Arc::clone(user))) }
}

/// `user` as templates see it: fields are converted on access, and null source values become
/// undefined so that they render as empty (never as "none").
#[derive(Debug)]
struct UserObject {
    user: Arc<SourceUser>,
    attrs: OnceLock<JinjaValue>,
    manager: OnceLock<JinjaValue>,
}

impl UserObject {
    fn new(user: Arc<SourceUser>) -> UserObject {
        UserObject {
            user,
            attrs: OnceLock::new(),
            manager: OnceLock::new(),
        }
    }
}

const USER_FIELDS: &[&str] = &[
    "id",
    "login",
    "email",
    "given_name",
    "family_name",
    "display_name",
    "active",
    "status",
    "department",
    "title",
    "employee_id",
    "manager",
    "groups",
    "attrs",
];

fn optional(value: &Option<String>) -> JinjaValue {
    match value {
        Some(text) => JinjaValue::from(text.as_str()),
        None => JinjaValue::UNDEFINED,
    }
}

/// Converts JSON to a template value, with nulls as undefined.
fn json_to_jinja(value: &Value) -> JinjaValue {
    match value {
        Value::Null => JinjaValue::UNDEFINED,
        Value::Bool(flag) => JinjaValue::from(*flag),
        Value::Number(number) => {
            if let Some(int) = number.as_i64() {
                JinjaValue::from(int)
            } else if let Some(uint) = number.as_u64() {
                JinjaValue::from(uint)
            } else {
                JinjaValue::from(number.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(text) => JinjaValue::from(text.as_str()),
        Value::Array(items) => items.iter().map(json_to_jinja).collect(),
        Value::Object(map) => object_to_jinja(map),
    }
}

fn object_to_jinja(map: &serde_json::Map<String, Value>) -> JinjaValue {
    map.iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| (key.as_str(), json_to_jinja(value)))
        .collect::<BTreeMap<&str, JinjaValue>>()
        .into()
}

impl Object for UserObject {
    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        let user = &self.user;
        let value = match key.as_str()? {
            "id" => JinjaValue::from(user.id.0.as_str()),
            "login" => optional(&user.login),
            "email" => optional(&user.email),
            "given_name" => optional(&user.given_name),
            "family_name" => optional(&user.family_name),
            "display_name" => optional(&user.display_name),
            "active" => JinjaValue::from(user.active),
            "status" => optional(&user.status),
            "department" => optional(&user.department),
            "title" => optional(&user.title),
            "employee_id" => optional(&user.employee_id),
            "manager" => self
                .manager
                .get_or_init(|| match &user.manager {
                    None => JinjaValue::UNDEFINED,
                    Some(manager) => {
                        let mut map = BTreeMap::new();
                        map.insert("id", JinjaValue::from(manager.id.0.as_str()));
                        for (name, field) in [
                            ("login", &manager.login),
                            ("email", &manager.email),
                            ("display_name", &manager.display_name),
                        ] {
                            if let Some(text) = field {
                                map.insert(name, JinjaValue::from(text.as_str()));
                            }
                        }
                        JinjaValue::from(map)
                    }
                })
                .clone(),
            "groups" => user
                .groups
                .iter()
                .map(|group| JinjaValue::from(group.as_str()))
                .collect(),
            "attrs" => self
                .attrs
                .get_or_init(|| object_to_jinja(&user.attrs.to_map()))
                .clone(),
            _ => return None,
        };
        Some(value)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(USER_FIELDS)
    }
}

#[cfg(test)]
mod tests;
