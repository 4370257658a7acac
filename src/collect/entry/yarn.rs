//! Hadoop YARN's ResourceManager: with `simple` authentication (Hadoop's
//! default) its REST API (`/ws/v1/cluster/apps`) runs any command anyone
//! submits, the door of the Kinsing and 8220 gangs' Hadoop campaigns.
//!
//! Settings come from `core-site.xml` (`hadoop.security.authentication`) and
//! `yarn-site.xml` (the web address), Hadoop's `<property><name/><value/>`
//! files, parsed with roxmltree (positions for errors).

use std::collections::HashMap;

/// Hadoop's defaults (core-default.xml, yarn-default.xml).
pub const DEFAULT_AUTH: &str = "simple";
pub const DEFAULT_RM_HOSTNAME: &str = "0.0.0.0";
pub const DEFAULT_WEBAPP_PORT: u16 = 8088;

/// name → (value, `file:line`).
pub type Properties = HashMap<String, (String, String)>;

/// Parses one `*-site.xml`. Errors are `file:line:col: message`.
pub fn parse_site(path: &str, text: &str) -> Result<Properties, String> {
    let file = crate::escape::escape_str(path);
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, opts).map_err(|e| {
        let p = e.pos();
        format!("{file}:{}:{}: {e}", p.row, p.col)
    })?;
    let mut out = Properties::new();
    for prop in doc.descendants().filter(|n| n.has_tag_name("property")) {
        let child = |tag: &str| {
            prop.children()
                .find(|c| c.has_tag_name(tag))
                .map(|c| c.text().unwrap_or("").trim().to_string())
        };
        let (Some(name), Some(value)) = (child("name"), child("value")) else {
            continue;
        };
        let line = doc.text_pos_at(prop.range().start).row;
        // Hadoop: a later definition of the same name overrides (unless final).
        out.insert(name, (value, format!("{file}:{line}")));
    }
    Ok(out)
}

/// The ResourceManager's effective authentication and web address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YarnConf {
    pub auth: (String, String),
    /// `host:port` and where it came from.
    pub webapp: (String, String),
    pub errors: Vec<String>,
}

/// Combines `core-site.xml` and `yarn-site.xml` (either may be missing).
pub fn judge(core: Option<(&str, &str)>, yarn: Option<(&str, &str)>) -> YarnConf {
    let mut errors = Vec::new();
    let mut load = |f: Option<(&str, &str)>| match f {
        Some((p, t)) => parse_site(p, t).unwrap_or_else(|e| {
            errors.push(e);
            Properties::new()
        }),
        None => Properties::new(),
    };
    let core = load(core);
    let yarn = load(yarn);
    let auth = core
        .get("hadoop.security.authentication")
        .cloned()
        .unwrap_or((DEFAULT_AUTH.into(), "default".into()));
    let hostname = yarn
        .get("yarn.resourcemanager.hostname")
        .map(|v| v.0.clone())
        .unwrap_or(DEFAULT_RM_HOSTNAME.into());
    let webapp = match yarn.get("yarn.resourcemanager.webapp.address") {
        Some((v, src)) => (
            v.replace("${yarn.resourcemanager.hostname}", &hostname),
            src.clone(),
        ),
        None => (
            format!("{hostname}:{DEFAULT_WEBAPP_PORT}"),
            yarn.get("yarn.resourcemanager.hostname")
                .map_or("default".into(), |v| v.1.clone()),
        ),
    };
    YarnConf {
        auth: (auth.0.to_ascii_lowercase(), auth.1),
        webapp: (crate::escape::escape_str(&webapp.0), webapp.1),
        errors,
    }
}

/// Configuration directories for a running ResourceManager: its
/// `HADOOP_CONF_DIR`/`YARN_CONF_DIR`, `$HADOOP_HOME/etc/hadoop`, then the
/// packaged places.
pub fn conf_dirs(environ: &[Vec<u8>]) -> Vec<String> {
    let get = |k: &str| {
        environ.iter().find_map(|e| {
            let e = String::from_utf8_lossy(e);
            e.strip_prefix(k)?.strip_prefix('=').map(str::to_string)
        })
    };
    let mut out = Vec::new();
    out.extend(get("YARN_CONF_DIR"));
    out.extend(get("HADOOP_CONF_DIR"));
    out.extend(get("HADOOP_HOME").map(|h| format!("{h}/etc/hadoop")));
    out.push("/etc/hadoop/conf".into());
    out.push("/etc/hadoop".into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_resource_manager() {
        let yarn = include_str!("../../../tests/fixtures/entry/yarn-site.xml");
        let c = judge(None, Some(("/etc/hadoop/yarn-site.xml", yarn)));
        assert_eq!(c.auth.0, "simple");
        assert_eq!(c.webapp.0, "0.0.0.0:8088");
        assert_eq!(c.webapp.1, "/etc/hadoop/yarn-site.xml:4");
        assert!(c.errors.is_empty());
    }

    #[test]
    fn kerberos_and_explicit_address() {
        let core = "<configuration><property><name>hadoop.security.authentication</name>\
                    <value>Kerberos</value></property></configuration>";
        let yarn =
            "<configuration>\n<property>\n<name>yarn.resourcemanager.webapp.address</name>\n\
                    <value>127.0.0.1:8088</value>\n</property>\n</configuration>";
        let c = judge(Some(("core-site.xml", core)), Some(("yarn-site.xml", yarn)));
        assert_eq!(c.auth.0, "kerberos");
        assert_eq!(
            c.webapp,
            ("127.0.0.1:8088".into(), "yarn-site.xml:2".into())
        );
    }

    #[test]
    fn broken_xml_and_entities_are_refused_with_a_position() {
        let c = judge(
            None,
            Some(("y.xml", "<configuration>\n  <property>\n</configuration>")),
        );
        assert!(c.errors[0].starts_with("y.xml:3:"), "{:?}", c.errors);
        let bomb = "<!DOCTYPE x [<!ENTITY a \"aaaaaaaa\">]><configuration>&a;</configuration>";
        let c = judge(None, Some(("y.xml", bomb)));
        assert_eq!(c.errors.len(), 1);
    }
}
