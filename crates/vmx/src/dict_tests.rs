use super::*;
use proptest::prelude::*;

const VMX: &str = r#"#!/usr/bin/vmware
.encoding = "UTF-8"
# A hand-written comment
config.version = "8"
DisplayName = "say |22hi|22 |7C ok"

memsize = "1024"
scsi0:0.present = "TRUE"
unknown.key=unquoted   # trailing note
"#;

#[test]
fn unmodified_round_trip_is_byte_exact() {
    for text in [
        VMX,
        "a = \"1\"\r\nb = \"2\"\r\n",
        "a = \"1\"\nb = \"2\"",
        "\u{feff}a = \"1\"\n",
        "",
        "\n\n# only comments\n",
        "a = \"1\"\r\nb = \"2\"\n# mixed\r\n",
    ] {
        let dict = Dict::parse(text).unwrap();
        assert_eq!(dict.to_string(), text);
    }
}

#[test]
fn get_unescapes_and_ignores_key_case() {
    let dict = Dict::parse(VMX).unwrap();
    assert_eq!(dict.get("displayname"), Some(r#"say "hi" | ok"#));
    assert_eq!(dict.get("DISPLAYNAME"), dict.get("DisplayName"));
    assert_eq!(dict.get("unknown.key"), Some("unquoted"));
    assert_eq!(dict.get("missing"), None);
    assert_eq!(dict.len(), 6);
    assert_eq!(dict.line_of("memsize"), Some(7));
}

#[test]
fn set_replaces_in_place_keeping_key_case() {
    let mut dict = Dict::parse(VMX).unwrap();
    dict.set("displayname", "a \"b\" |c").unwrap();
    dict.set("unknown.KEY", "now quoted").unwrap();
    let text = dict.to_string();
    assert!(text.contains("DisplayName = \"a |22b|22 |7Cc\"\n\nmemsize"));
    assert!(text.contains("unknown.key=\"now quoted\"   # trailing note\n"));
    assert_eq!(
        Dict::parse(&text).unwrap().get("displayName"),
        Some("a \"b\" |c")
    );
}

#[test]
fn set_appends_new_keys_with_the_file_line_ending() {
    let mut dict = Dict::parse("a = \"1\"\r\nb = \"2\"").unwrap();
    dict.set("c.d", "3").unwrap();
    assert_eq!(
        dict.to_string(),
        "a = \"1\"\r\nb = \"2\"\r\nc.d = \"3\"\r\n"
    );
    assert_eq!(dict.keys().collect::<Vec<_>>(), ["a", "b", "c.d"]);
}

#[test]
fn remove_and_remove_prefix() {
    let text = "a = \"1\"\nsnapshot3.uid = \"3\"\n# keep\nSnapshot3.disk0.node = \"x\"\nsnapshot30.uid = \"30\"\n";
    let mut dict = Dict::parse(text).unwrap();
    assert_eq!(dict.remove_prefix("snapshot3."), 2);
    assert_eq!(dict.remove("A").as_deref(), Some("1"));
    assert_eq!(dict.remove("a"), None);
    assert_eq!(dict.to_string(), "# keep\nsnapshot30.uid = \"30\"\n");
    assert_eq!(dict.get("snapshot30.uid"), Some("30"));
}

#[test]
fn typed_getters() {
    let dict =
        Dict::parse("t = \"TRUE\"\nf = \"false\"\ny = \"yes\"\nn = \"42\"\ni = \"-7\"\n").unwrap();
    assert_eq!(dict.get_bool("t").unwrap(), Some(true));
    assert_eq!(dict.get_bool("f").unwrap(), Some(false));
    assert_eq!(dict.get_bool("y").unwrap(), Some(true));
    assert_eq!(dict.get_bool("none").unwrap(), None);
    assert_eq!(dict.get_u64("n").unwrap(), Some(42));
    assert_eq!(dict.get_i64("i").unwrap(), Some(-7));
    assert!(matches!(
        dict.get_u64("i"),
        Err(Error::InvalidValue { line: 5, ref key, .. }) if key == "i"
    ));
    assert!(matches!(
        dict.get_bool("n"),
        Err(Error::InvalidValue { line: 4, .. })
    ));
}

#[test]
fn catalog_style_is_detected_and_written() {
    let mut dict = Dict::parse("version= 1\ndisplay name= \"vm37\"\n").unwrap();
    assert_eq!(dict.style(), Style::Catalog);
    assert_eq!(dict.get("Display Name"), Some("vm37"));
    dict.set_number("version", 2u32).unwrap();
    dict.set_number("file.0.size", 4096u64).unwrap();
    dict.set_bare("state", "poweredOn").unwrap();
    dict.set("folder path", "/dc/vm").unwrap();
    assert_eq!(
        dict.to_string(),
        "version= 2\ndisplay name= \"vm37\"\nfile.0.size= 4096\nstate= poweredOn\nfolder path= \"/dc/vm\"\n"
    );
    let mut vmx = Dict::new(Style::Vmx);
    vmx.set_number("memsize", 512u32).unwrap();
    vmx.set_bool("x.present", true).unwrap();
    assert_eq!(vmx.to_string(), "memsize = \"512\"\nx.present = \"TRUE\"\n");
}

#[test]
fn insert_at_places_entries() {
    let mut dict = Dict::parse("a = \"1\"\nz = \"9\"").unwrap();
    let entries = [
        ("b".to_owned(), "2".to_owned()),
        ("A".to_owned(), "0".to_owned()),
    ];
    dict.insert_at(1, &entries).unwrap();
    assert_eq!(dict.to_string(), "a = \"0\"\nb = \"2\"\nz = \"9\"");
    dict.insert_at(99, &[("c".to_owned(), "3".to_owned())])
        .unwrap();
    assert_eq!(
        dict.to_string(),
        "a = \"0\"\nb = \"2\"\nz = \"9\"\nc = \"3\"\n"
    );
    assert_eq!(dict.get("c"), Some("3"));
    assert_eq!(dict.line_of("z"), Some(3));
}

#[test]
fn error_too_large() {
    let big = "#".repeat(MAX_INPUT_BYTES + 1);
    assert!(matches!(Dict::parse(&big), Err(Error::TooLarge { .. })));
    assert!(matches!(
        Dict::parse_bytes(big.as_bytes()),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn error_line_too_long() {
    let text = format!("a = \"1\"\nb = \"{}\"\n", "x".repeat(MAX_LINE_BYTES));
    assert!(matches!(
        Dict::parse(&text),
        Err(Error::LineTooLong { line: 2, .. })
    ));
    let mut dict = Dict::new(Style::Vmx);
    let long = "|".repeat(MAX_LINE_BYTES / 3 + 1);
    assert!(matches!(
        dict.set("k", &long),
        Err(Error::LineTooLong { line: 1, .. })
    ));
    assert!(dict.is_empty());
}

#[test]
fn error_not_utf8_names_the_line() {
    let bytes = b"a = \"1\"\nb = \"\xff\"\n";
    assert!(matches!(
        Dict::parse_bytes(bytes),
        Err(Error::NotUtf8 { line: 2 })
    ));
}

#[test]
fn error_malformed() {
    let err = Dict::parse("a = \"1\"\njust words\n").unwrap_err();
    assert!(matches!(err, Error::Malformed { line: 2, ref text } if text == "just words"));
}

#[test]
fn error_duplicate_key_any_case() {
    let err = Dict::parse("displayName = \"a\"\n# c\nDISPLAYNAME = \"b\"\n").unwrap_err();
    assert!(matches!(
        err,
        Error::DuplicateKey { ref key, line: 3, first_line: 1 } if key == "DISPLAYNAME"
    ));
}

#[test]
fn error_invalid_escape() {
    let err = Dict::parse("k = \"|C3|28\"\n").unwrap_err();
    assert!(matches!(err, Error::InvalidEscape { line: 1, .. }));
}

#[test]
fn error_invalid_key() {
    let mut dict = Dict::default();
    for key in ["", " a", "a ", "#a", "a=b", "a\"b", "a\nb"] {
        assert!(
            matches!(dict.set(key, "v"), Err(Error::InvalidKey { .. })),
            "{key:?}"
        );
    }
    assert!(matches!(
        dict.set_bare("k", "two words"),
        Err(Error::InvalidValue { .. })
    ));
    assert!(dict.is_empty());
}

fn key_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z.][A-Za-z0-9._: -]{0,15}[A-Za-z0-9]".prop_map(|s| s)
}

proptest! {
    #[test]
    fn any_dict_round_trips(
        entries in proptest::collection::vec((key_strategy(), any::<String>()), 0..20),
        catalog in any::<bool>(),
    ) {
        let style = if catalog { Style::Catalog } else { Style::Vmx };
        let mut dict = Dict::new(style);
        let mut expected = std::collections::HashMap::new();
        for (k, v) in &entries {
            dict.set(k, v).unwrap();
            expected.insert(k.to_ascii_lowercase(), v.clone());
        }
        let text = dict.to_string();
        let back = Dict::parse(&text).unwrap();
        prop_assert_eq!(back.len(), expected.len());
        for (k, v) in &expected {
            prop_assert_eq!(back.get(k), Some(v.as_str()));
        }
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn accepted_text_round_trips_exactly(text in "([a-z. ]{0,6}(=|#)?[ \"a-z|0-9]{0,8}(\r?\n)?){0,8}") {
        if let Ok(dict) = Dict::parse(&text) {
            prop_assert_eq!(dict.to_string(), text);
        }
    }
}
