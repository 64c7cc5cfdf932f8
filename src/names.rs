//! DNS name syntax shared by the checks: RFC 1123 labels and subdomains, the
//! normalized form every rule compares, and how a user's value is quoted.

/// Longest DNS name and label (RFC 1035).
pub const MAX_HOSTNAME: usize = 253;
pub const MAX_LABEL: usize = 63;

/// Lowercase, without the root dot: the form every rule compares.
pub fn normalize(hostname: &str) -> String {
    let lower = hostname.to_ascii_lowercase();
    lower.strip_suffix('.').unwrap_or(&lower).to_string()
}

/// RFC 1123 subdomain syntax (lowercase), as the CRD's pattern states it.
pub fn dns_subdomain_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    if name.len() > MAX_HOSTNAME {
        return Some("is longer than 253 characters");
    }
    name.split('.').find_map(|label| dns_label_problem(label).map(|_| subdomain_label_problem(label)))
}

fn subdomain_label_problem(label: &str) -> &'static str {
    if label.is_empty() {
        "has an empty label (two dots in a row, or a leading or trailing dot)"
    } else if label.len() > MAX_LABEL {
        "has a label longer than 63 characters"
    } else if label.starts_with('-') || label.ends_with('-') {
        "has a label starting or ending with '-'"
    } else {
        "has characters other than lowercase letters, digits, '-' and '.'"
    }
}

/// RFC 1123 label: 1-63 of [a-z0-9-], starting and ending alphanumeric.
pub fn dns_label_problem(label: &str) -> Option<&'static str> {
    if label.is_empty() {
        return Some("is empty");
    }
    if label.len() > MAX_LABEL {
        return Some("is longer than 63 characters");
    }
    if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Some("has characters other than lowercase letters, digits and '-'");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Some("starts or ends with '-'");
    }
    None
}

/// `name` ends with `.suffix` (suffix already lowercase).
pub fn has_dot_suffix(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() && name.ends_with(suffix) && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

/// A user value for a message: quoted, and cut short so a huge field cannot
/// blow up a condition message.
pub fn quoted(value: &str) -> String {
    const MAX: usize = 80;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}… ({} characters)", value.chars().count())
    }
}
