//! Names that become zenoh keys or ROS 2 names, checked where they enter (the CLI's flags), so
//! nothing publishes on a wildcard key or under a name a ROS 2 graph cannot show.
//!
//! Rules: zenoh key expressions (chunks separated by `/`, none empty; `*`, `**`, `$*`, `?`
//! and `#` are wildcards or reserved, so a key that is published may not hold them); ROS 2
//! names (REP 144 / design article "Topic and Service names": tokens of `[A-Za-z0-9_]` not
//! starting with a digit, no `__`, absolute namespaces start with `/`); ROS_DOMAIN_ID 0–232,
//! the range rmw_zenoh (and DDS's port mapping) accepts by default.

/// The highest ROS_DOMAIN_ID rmw_zenoh accepts by default.
pub const MAX_DOMAIN_ID: u32 = 232;

/// A concrete zenoh key (or part of one) that is published: no wildcards, no empty chunk.
pub fn concrete_key(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if let Some(c) = s.chars().find(|c| matches!(c, '*' | '$' | '?' | '#')) {
        return Err(format!(
            "{what} `{s}` holds `{c}`, a zenoh wildcard or reserved character: a published key must be concrete"
        ));
    }
    if s.split('/').any(str::is_empty) {
        return Err(format!(
            "{what} `{s}` has an empty key chunk (a leading, trailing or doubled `/`)"
        ));
    }
    if s.chars().any(char::is_whitespace) {
        return Err(format!("{what} `{s}` holds white space"));
    }
    Ok(())
}

/// One ROS 2 name token: `[A-Za-z_][A-Za-z0-9_]*` without `__`.
fn token(what: &str, full: &str, t: &str) -> Result<(), String> {
    let ok = t
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !t.contains("__");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{full}`: `{t}` is not a ROS 2 name token (letters, digits and single underscores, not starting with a digit)"
        ))
    }
}

/// A model output's name as one topic token, valid as a zenoh key chunk and as a ROS 2 name
/// token: characters other than ASCII letters, digits and `_` become `_`, runs of `_` one,
/// and a leading digit (or nothing) gets an `o` before it (`heads.aux/0` → `heads_aux_0`).
pub fn topic_token(name: &str) -> String {
    let mut t = String::new();
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '_' };
        if !(c == '_' && t.ends_with('_')) {
            t.push(c);
        }
    }
    if !t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        t.insert(0, 'o');
    }
    t
}

/// A ROS 2 node name: one token.
pub fn ros2_node(s: &str) -> Result<(), String> {
    token("node name", s, s)
}

/// A ROS 2 namespace: `/` or `/token(/token)*`.
pub fn ros2_namespace(s: &str) -> Result<(), String> {
    let Some(rest) = s.strip_prefix('/') else {
        return Err(format!("namespace `{s}` must start with `/`"));
    };
    if rest.is_empty() {
        return Ok(());
    }
    if rest.ends_with('/') || rest.contains("//") {
        return Err(format!("namespace `{s}` may not end with `/` or hold `//`"));
    }
    rest.split('/').try_for_each(|t| token("namespace", s, t))
}

/// A ROS_DOMAIN_ID within rmw_zenoh's default range.
pub fn domain_id(id: u32) -> Result<(), String> {
    if id > MAX_DOMAIN_ID {
        return Err(format!(
            "domain id {id} is out of range: ROS 2 (rmw_zenoh's default) takes 0–{MAX_DOMAIN_ID}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_become_valid_topic_tokens() {
        for (name, want) in [
            ("heads.aux/0", "heads_aux_0"),
            ("logits", "logits"),
            ("0:feat", "o0_feat"),
            ("a__b", "a_b"),
            ("", "o"),
            ("*x$", "_x_"),
        ] {
            let t = topic_token(name);
            assert_eq!(t, want, "{name}");
            assert!(concrete_key("raw", &t).is_ok());
            assert!(ros2_node(&t).is_ok(), "{t}");
        }
    }

    #[test]
    fn wildcards_empty_chunks_and_bad_ros_names_are_refused() {
        for bad in ["**", "cam*", "a//b", "/a", "a/", "", "$*", "a b", "x?"] {
            assert!(concrete_key("--camera", bad).is_err(), "{bad}");
        }
        for good in ["front", "front_left/0", "overparam-v1"] {
            concrete_key("--camera", good).unwrap();
        }
        for bad in ["perception", "/a b", "/a//b", "/a/", "/1a", "/a__b", "/a-b"] {
            assert!(ros2_namespace(bad).is_err(), "{bad}");
        }
        for good in ["/", "/perception", "/vehicle1/perception", "/_x"] {
            ros2_namespace(good).unwrap();
        }
        assert!(ros2_node("over param").is_err() && ros2_node("9node").is_err());
        ros2_node("overparam").unwrap();
        domain_id(232).unwrap();
        assert!(domain_id(233).unwrap_err().contains("0–232"));
    }
}
