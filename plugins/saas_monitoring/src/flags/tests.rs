use super::*;
use serde_json::json;

fn flags(v: serde_json::Value) -> Result<Flags, String> {
    let flags: Vec<Flag> = serde_json::from_value(v["feature_flags"].clone()).map_err(|e| e.to_string())?;
    let cohorts = serde_json::from_value(v["cohorts"].clone()).unwrap_or_default();
    Flags::new(flags, cohorts)
}

fn subject<'a>(user: &'a str, email: Option<&'a str>, signed_up: Option<&str>) -> Subject<'a> {
    Subject { user, email, signed_up: signed_up.map(|t| t.parse().unwrap()) }
}

fn one(f: &Flags, s: &Subject<'_>) -> String {
    f.evaluate(s, &[]).into_iter().next().unwrap().1
}

#[test]
fn rules_are_tried_in_order_and_the_default_is_off() {
    let f = flags(json!({
        "cohorts": { "staff": { "email_domains": ["all-hands.dev"] } },
        "feature_flags": [{ "name": "new_editor", "rules": [
            { "users": ["u-banned"], "variant": "false" },
            { "cohort": "staff", "variant": "true" },
            { "signed_up_after": "2026-11-01T00:00:00Z", "variant": "beta" },
        ]}]
    }))
    .unwrap();
    assert_eq!(one(&f, &subject("u1", Some("a@All-Hands.dev"), None)), "true");
    assert_eq!(one(&f, &subject("u-banned", Some("b@all-hands.dev"), None)), "false");
    assert_eq!(one(&f, &subject("u2", Some("c@acme.com"), Some("2026-11-15T00:00:00Z"))), "beta");
    assert_eq!(one(&f, &subject("u3", Some("d@acme.com"), Some("2026-10-15T00:00:00Z"))), "false");
    // No email known: an email rule does not hold.
    assert_eq!(one(&f, &subject("u4", None, None)), "false");
}

#[test]
fn a_percentage_is_sticky_and_raising_it_only_adds_users() {
    let at = |p: f64| {
        let f = flags(json!({ "feature_flags": [{ "name": "f", "rules": [{ "percentage": p, "variant": "true" }] }] }))
            .unwrap();
        (0..2000).filter(|i| one(&f, &subject(&format!("user-{i}"), None, None)) == "true").collect::<Vec<_>>()
    };
    let (ten, fifty) = (at(10.0), at(50.0));
    assert!((150..250).contains(&ten.len()), "{}", ten.len());
    assert!((900..1100).contains(&fifty.len()), "{}", fifty.len());
    assert!(ten.iter().all(|u| fifty.contains(u)), "a user in at 10% is out at 50%");
    assert_eq!(at(10.0), ten, "the same users every time");
    assert!(at(0.0).is_empty());
    assert_eq!(at(100.0).len(), 2000);
}

#[test]
fn a_split_gives_each_variant_its_share_independently_of_the_percentage() {
    let f = flags(json!({ "feature_flags": [{ "name": "layout", "default": "classic", "rules": [
        { "percentage": 50, "split": { "a": 1, "b": 1 } } ] }] }))
    .unwrap();
    let mut count = BTreeMap::new();
    for i in 0..4000 {
        *count.entry(one(&f, &subject(&format!("u{i}"), None, None))).or_insert(0) += 1;
    }
    assert!((1800..2200).contains(&count["classic"]), "{count:?}");
    assert!((800..1200).contains(&count["a"]) && (800..1200).contains(&count["b"]), "{count:?}");
}

#[test]
fn mistakes_are_named() {
    let cases = [
        (
            json!({ "feature_flags": [{ "name": "f", "rules": [{ "percentage": 120, "variant": "true" }] }] }),
            "percentage",
        ),
        (
            json!({ "feature_flags": [{ "name": "f", "rules": [{ "cohort": "nope", "variant": "true" }] }] }),
            "no cohort `nope`",
        ),
        (json!({ "feature_flags": [{ "name": "f", "rules": [{ "users": ["a"] }] }] }), "either `variant` or a `split`"),
        (json!({ "feature_flags": [{ "name": "f" }, { "name": "f" }] }), "a name of its own"),
        (
            json!({ "feature_flags": [{ "name": "f", "rules": [{ "email_domains": ["x@y.z"], "variant": "true" }] }] }),
            "not addresses",
        ),
        (json!({ "cohorts": { "c": { "variant": "true" } }, "feature_flags": [] }), "conditions only"),
        (
            json!({ "feature_flags": [{ "name": "f", "rules": [{ "user": ["a"], "variant": "true" }] }] }),
            "unknown field `user`",
        ),
    ];
    for (config, says) in cases {
        let e = flags(config.clone()).unwrap_err();
        assert!(e.contains(says), "{config}: {e}");
    }
}

#[test]
fn only_the_wanted_flags_are_evaluated() {
    let f = flags(json!({ "feature_flags": [{ "name": "a" }, { "name": "b", "default": "on" }] })).unwrap();
    assert_eq!(f.evaluate(&subject("u", None, None), &["b".to_owned()]), vec![("b".to_owned(), "on".to_owned())]);
    assert!(!f.needs_subjects());
}
