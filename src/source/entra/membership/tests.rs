use super::*;

fn children(links: &[(&str, &str)]) -> Children {
    let mut children = Children::new();
    for (parent, kid) in links {
        children
            .entry((*parent).to_owned())
            .or_default()
            .insert((*kid).to_owned());
    }
    children
}

fn users(members: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    members
        .iter()
        .map(|(group, users)| {
            (
                (*group).to_owned(),
                users.iter().map(|user| (*user).to_owned()).collect(),
            )
        })
        .collect()
}

fn all(_: &str) -> bool {
    true
}

/// The selected groups a direct member of `group` is in, sorted.
fn reach(closures: &Closures, group: &str) -> Vec<String> {
    let mut found: Vec<String> = closures.of(group).map(str::to_owned).collect();
    found.sort();
    found
}

fn flat(
    users_of: &BTreeMap<String, BTreeSet<String>>,
    closures: &Closures,
) -> BTreeMap<String, Vec<String>> {
    flatten(users_of, closures)
        .into_iter()
        .map(|(user, groups)| (user, groups.into_iter().collect()))
        .collect()
}

fn list(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

#[test]
fn a_cycle_ends_and_every_group_in_it_reaches_the_others() {
    // a ⊃ b ⊃ c ⊃ a, and a ⊃ u1, c ⊃ u2; "top" ⊃ b.
    let links = children(&[("a", "b"), ("b", "c"), ("c", "a"), ("top", "b")]);
    let members = users(&[("a", &["u1"]), ("c", &["u2"])]);
    let closures = closures(members.keys(), &links, Nesting::Flatten, all);
    assert_eq!(reach(&closures, "a"), list(&["a", "b", "c", "top"]));
    assert_eq!(reach(&closures, "c"), list(&["a", "b", "c", "top"]));
    assert_eq!(reach(&closures, "top"), list(&["top"]));
    let flat = flat(&members, &closures);
    assert_eq!(flat["u1"], list(&["a", "b", "c", "top"]));
    assert_eq!(flat["u2"], list(&["a", "b", "c", "top"]));
    // Two groups that are members of each other, and nothing else.
    let pair = children(&[("x", "y"), ("y", "x")]);
    let closures = super::closures(std::iter::empty(), &pair, Nesting::Flatten, all);
    assert_eq!(reach(&closures, "x"), list(&["x", "y"]));
}

#[test]
fn a_diamond_counts_each_group_once() {
    // top ⊃ left, top ⊃ right, left ⊃ bottom, right ⊃ bottom ⊃ u1.
    let links = children(&[
        ("top", "left"),
        ("top", "right"),
        ("left", "bottom"),
        ("right", "bottom"),
    ]);
    let members = users(&[("bottom", &["u1"]), ("left", &["u2"])]);
    let closures = closures(members.keys(), &links, Nesting::Flatten, all);
    assert_eq!(
        reach(&closures, "bottom"),
        list(&["bottom", "left", "right", "top"])
    );
    let flat = flat(&members, &closures);
    assert_eq!(flat["u1"], list(&["bottom", "left", "right", "top"]));
    assert_eq!(flat["u2"], list(&["left", "top"]));
}

#[test]
fn a_deep_chain_is_followed_to_its_top_without_a_deep_stack() {
    // g0 ⊃ g1 ⊃ … ⊃ g9999 ⊃ u1; only the top and the tenth group down are selected.
    let depth = 10_000;
    let name = |level: usize| format!("g{level}");
    let mut links = Children::new();
    for level in 0..depth - 1 {
        links
            .entry(name(level))
            .or_default()
            .insert(name(level + 1));
    }
    let members = users(&[("g9999", &["u1"])]);
    let keep = |id: &str| id == "g0" || id == "g10";
    let closures = closures(members.keys(), &links, Nesting::Flatten, keep);
    assert_eq!(reach(&closures, "g9999"), list(&["g0", "g10"]));
    assert_eq!(reach(&closures, "g5"), list(&["g0"]));
    assert_eq!(reach(&closures, "g10"), list(&["g0", "g10"]));
    assert_eq!(flat(&members, &closures)["u1"], list(&["g0", "g10"]));
    assert_eq!(below(&links, "g9990", Nesting::Flatten).len(), 10);
}

#[test]
fn only_selected_groups_are_collected_but_unselected_ones_pass_members_on() {
    // "SocialTalent" ⊃ "Sales EMEA" ⊃ u1; only "SocialTalent" is selected.
    let links = children(&[("st", "emea")]);
    let members = users(&[("emea", &["u1"]), ("other", &["u2"])]);
    let closures = closures(members.keys(), &links, Nesting::Flatten, |id| id == "st");
    assert_eq!(reach(&closures, "emea"), list(&["st"]));
    assert!(!closures.reaches_any("other"));
    let mut groups: Vec<&str> = closures.groups().collect();
    groups.sort_unstable();
    assert_eq!(groups, ["emea", "st"]);
    let flat = flat(&members, &closures);
    assert_eq!(flat["u1"], list(&["st"]));
    assert!(
        !flat.contains_key("u2"),
        "a user in no selected group has none"
    );
}

#[test]
fn direct_only_ignores_child_groups() {
    let links = children(&[("st", "emea"), ("emea", "st")]);
    let members = users(&[("emea", &["u1"]), ("st", &["u2"])]);
    let closures = closures(members.keys(), &links, Nesting::DirectOnly, all);
    let flat = flat(&members, &closures);
    assert_eq!(flat["u1"], list(&["emea"]));
    assert_eq!(flat["u2"], list(&["st"]));
    assert_eq!(
        below(&links, "st", Nesting::DirectOnly),
        BTreeSet::from(["st".to_owned()])
    );
}

#[test]
fn below_follows_child_groups_through_cycles() {
    let links = children(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("e", "a")]);
    let found: Vec<String> = below(&links, "b", Nesting::Flatten).into_iter().collect();
    assert_eq!(found, list(&["a", "b", "c", "d"]));
    let found: Vec<String> = below(&links, "d", Nesting::Flatten).into_iter().collect();
    assert_eq!(found, list(&["d"]));
}
