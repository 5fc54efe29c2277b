//! Who may sign in through a provider, and what they may grant: the `allowed_*` rules and
//! `scope_rules` of an `[[identity_providers]]` entry, applied to the person it vouched for.
//! Emails and domains match only a verified email, case-insensitively; groups match exactly.

use super::Person;
use crate::config::{IdentityProviderConfig, ScopeRule};

fn email_in(person: &Person, emails: &[String]) -> bool {
    person
        .email
        .as_deref()
        .is_some_and(|e| emails.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn domain_in(person: &Person, domains: &[String]) -> bool {
    let Some((_, domain)) = person.email.as_deref().and_then(|e| e.rsplit_once('@')) else {
        return false;
    };
    domains
        .iter()
        .any(|d| d.trim_start_matches('@').eq_ignore_ascii_case(domain))
}

fn group_in(person: &Person, groups: &[String]) -> bool {
    person.groups.iter().any(|g| groups.contains(g))
}

/// Whether the provider's rules let `person` in.
pub fn admitted(provider: &IdentityProviderConfig, person: &Person) -> bool {
    provider.allow_all_users
        || email_in(person, &provider.allowed_emails)
        || domain_in(person, &provider.allowed_domains)
        || group_in(person, &provider.allowed_groups)
}

fn matches(rule: &ScopeRule, person: &Person) -> bool {
    email_in(person, &rule.emails)
        || domain_in(person, &rule.domains)
        || group_in(person, &rule.groups)
}

/// The scopes `person` may grant: the union of the rules they match (possibly none), or
/// `None` (every offered scope) when the provider has no scope rules.
pub fn scopes_for(provider: &IdentityProviderConfig, person: &Person) -> Option<Vec<String>> {
    if provider.scope_rules.is_empty() {
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    for rule in provider.scope_rules.iter().filter(|r| matches(r, person)) {
        for s in &rule.scopes {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
    }
    Some(out)
}

/// Whether the provider's rules need the person's groups (GitHub asks its API for them only
/// then).
pub fn needs_groups(provider: &IdentityProviderConfig) -> bool {
    !provider.allowed_groups.is_empty() || provider.scope_rules.iter().any(|r| !r.groups.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;

    fn provider() -> IdentityProviderConfig {
        IdentityProviderConfig {
            id: None,
            kind: ProviderKind::Oidc,
            name: None,
            issuer: Some("https://idp.example".into()),
            client_id: "gw".into(),
            client_secret_env: Some("S".into()),
            client_secret_file: None,
            scopes: None,
            groups_claim: None,
            authorize_url: None,
            token_url: None,
            api_url: None,
            allowed_emails: vec![],
            allowed_domains: vec![],
            allowed_groups: vec![],
            allow_all_users: false,
            scope_rules: vec![],
        }
    }

    fn person(email: Option<&str>, groups: &[&str]) -> Person {
        Person {
            provider: "oidc".into(),
            issuer: "https://idp.example".into(),
            subject: "1".into(),
            email: email.map(str::to_string),
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn each_rule_admits_and_nothing_else_does() {
        let mut p = provider();
        let alice = person(Some("Alice@Example.com"), &["eng"]);
        let nobody = person(None, &[]);
        assert!(!admitted(&p, &alice), "no rule: nobody");
        p.allowed_emails = vec!["alice@example.com".into()];
        assert!(admitted(&p, &alice) && !admitted(&p, &nobody));
        p.allowed_emails.clear();
        p.allowed_domains = vec!["example.com".into()];
        assert!(admitted(&p, &alice));
        assert!(!admitted(&p, &person(Some("a@example.com.evil"), &[])));
        assert!(!admitted(&p, &person(Some("a@sub.example.com"), &[])));
        p.allowed_domains.clear();
        p.allowed_groups = vec!["eng".into()];
        assert!(admitted(&p, &alice) && !admitted(&p, &person(None, &["sales"])));
        p.allowed_groups.clear();
        p.allow_all_users = true;
        assert!(admitted(&p, &nobody));
    }

    #[test]
    fn scope_rules_give_the_union_of_what_matches() {
        let mut p = provider();
        let alice = person(Some("alice@example.com"), &["eng", "admins"]);
        assert_eq!(scopes_for(&p, &alice), None);
        p.scope_rules = vec![
            ScopeRule {
                groups: vec!["eng".into()],
                scopes: vec!["mcp:read".into()],
                ..Default::default()
            },
            ScopeRule {
                groups: vec!["admins".into()],
                scopes: vec!["mcp:read".into(), "mcp:write".into()],
                ..Default::default()
            },
            ScopeRule {
                domains: vec!["other.org".into()],
                scopes: vec!["mcp:admin".into()],
                ..Default::default()
            },
        ];
        assert_eq!(
            scopes_for(&p, &alice),
            Some(vec!["mcp:read".into(), "mcp:write".into()])
        );
        assert_eq!(scopes_for(&p, &person(None, &[])), Some(vec![]));
        assert!(needs_groups(&p));
    }
}
