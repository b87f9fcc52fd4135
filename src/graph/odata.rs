//! OData system query options as Graph reads them, for matching. Pure.
//!
//! Graph treats `$select` and `$SELECT` alike, `$select=a,b` and `$select=b,a` alike, and
//! ignores runs of whitespace in `$filter` and `$search`; different SDKs (and people) write
//! the same query differently, so with the `odata` match rule on, these spellings match.
//! Continuation tokens (`$skiptoken`, `$deltatoken`) are opaque: only their name is
//! normalised, never their value.

/// Options whose value is a comma-separated list whose order carries no meaning.
const LIST_OPTIONS: [&str; 3] = ["$select", "$expand", "$orderby"];
/// Options whose value is an expression where whitespace runs are insignificant.
const EXPRESSION_OPTIONS: [&str; 2] = ["$filter", "$search"];

/// Normalises decoded `(name, value)` query pairs in place and re-sorts them. Names that
/// start with `$` are lower-cased; list and expression options are rewritten as above.
pub fn normalize_query(pairs: &mut [(String, String)]) {
    for (name, value) in pairs.iter_mut() {
        if !name.starts_with('$') {
            continue;
        }
        *name = name.to_ascii_lowercase();
        if LIST_OPTIONS.contains(&name.as_str()) {
            *value = sorted_list(value);
        } else if EXPRESSION_OPTIONS.contains(&name.as_str()) {
            *value = collapse_whitespace(value);
        }
    }
    pairs.sort();
}

/// Splits on commas outside parentheses and quotes (`$expand=a($select=x,y),b` has two
/// items), trims each item, normalises nested options, and sorts.
fn sorted_list(value: &str) -> String {
    let mut items: Vec<String> = split_top_level(value)
        .into_iter()
        .map(|item| normalize_item(item.trim()))
        .filter(|item| !item.is_empty())
        .collect();
    items.sort();
    items.join(",")
}

/// `nav($select=b,a;$top=2)` → `nav($select=a,b;$top=2)`: nested options get the same treatment.
fn normalize_item(item: &str) -> String {
    let Some(open) = item.find('(') else {
        return item.to_owned();
    };
    if !item.ends_with(')') {
        return item.to_owned();
    }
    let head = item[..open].trim();
    let inner = &item[open + 1..item.len() - 1];
    let mut nested: Vec<(String, String)> = inner
        .split(';')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    normalize_query(&mut nested);
    let joined: Vec<String> = nested
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    format!("{head}({})", joined.join(";"))
}

fn split_top_level(value: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut quoted, mut start) = (0usize, false, 0usize);
    for (i, c) in value.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            ',' if !quoted && depth == 0 => {
                items.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&value[start..]);
    items
}

/// Whitespace runs outside single-quoted literals become one space; the ends are trimmed.
/// Inside literals (`startswith(userName,'a  b')`) every character counts.
fn collapse_whitespace(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut quoted = false;
    let mut pending_space = false;
    for c in value.trim().chars() {
        if c == '\'' {
            quoted = !quoted;
        }
        if !quoted && c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(query: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        normalize_query(&mut pairs);
        pairs
    }

    /// `(a, b, same)`: whether two queries normalise to the same pairs.
    fn check(a: &[(&str, &str)], b: &[(&str, &str)], same: bool) {
        assert_eq!(normalized(a) == normalized(b), same, "{a:?} vs {b:?}");
    }

    #[test]
    fn odata_options() {
        check(
            &[("$select", "id,status")],
            &[("$SELECT", "id,status")],
            true,
        );
        check(
            &[("$select", "id,status")],
            &[("$select", "status, id")],
            true,
        );
        check(
            &[("$orderby", "a desc,b")],
            &[("$orderBy", "b,a desc")],
            true,
        );
        check(
            &[("$expand", "x($select=b,a),y")],
            &[("$expand", "y,x($select=a,b)")],
            true,
        );
        check(
            &[("$filter", "status eq 'compliant'  and  id ne 'x'")],
            &[("$filter", " status eq 'compliant' and id ne 'x' ")],
            true,
        );
        // Whitespace inside a literal is data.
        check(
            &[("$filter", "userName eq 'a  b'")],
            &[("$filter", "userName eq 'a b'")],
            false,
        );
        // Values stay case-sensitive, and non-$ parameters are untouched.
        check(&[("$select", "Id")], &[("$select", "id")], false);
        check(&[("Select", "a")], &[("select", "a")], false);
        // Continuation tokens are opaque.
        check(&[("$skipToken", "AbC")], &[("$skiptoken", "AbC")], true);
        check(&[("$skiptoken", "AbC")], &[("$skiptoken", "abc")], false);
        check(&[("$deltatoken", "a, b")], &[("$deltatoken", "b,a")], false);
    }
}
