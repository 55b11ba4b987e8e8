//! Cleaning: one policy for every path a result takes (sync answers and
//! webhooks alike), resolved per vendor in `policy.rs`. What it does, in
//! order, at every depth of the vendor's answer:
//!
//! - **Trims** strings and keys (a padded key becomes the trimmed one; of two
//!   keys equal once trimmed the later wins, as in JSON parsing).
//! - **Key rule**: a key naming personal data is dropped with its value. The
//!   key is split into words (at `_ - . space` and any other character that is
//!   not a letter or digit, at camelCase boundaries, between letters and
//!   digits) and case-folded; it is caught when the words of one list entry
//!   appear in it as whole, consecutive words (the entry's last word also in
//!   its plural with `s`), or when one of its words is an entry's words run
//!   together. So `owner_email`, `customerEmail`, `e-mail`, `Contact.Phone`,
//!   `phone_number_2`, `phonenumber` and `emails` are caught; a word is
//!   never matched in part: `emailed_at` (the word `emailed`) is kept, and
//!   `telephone_company_name` is dropped because it holds the whole word
//!   `telephone` (on the default list): the rule does not guess at meaning.
//!   A key whose text holds a detected value (an e-mail address as a key) is
//!   dropped too.
//! - **Value detectors**, each on unless turned off: e-mail addresses, phone
//!   numbers, payment card numbers (Luhn), IBANs (mod-97), US SSNs, found
//!   anywhere inside a string and replaced by `[redacted:<kind>]`
//!   ([`Action::Redact`]) or dropping the whole field ([`Action::Drop`]). A
//!   bare run of digits is taken only when a checksum matches (card, IBAN):
//!   order ids and timestamps stay.
//! - **Allow list**: a field at a path in `allow` is kept whatever the rules
//!   say (its string value unredacted); its children are still cleaned.
//!
//! Paths name where something was removed in the vendor's answer: keys joined
//! by `.`, array elements as `[i]` (original indices), keys that hold `.`,
//! `[`, `]`, `"` or `*` as `["k.e.y"]`, a key dropped for its own text as
//! `*`, the answer itself as `$`. Allow entries are written the same way, and
//! `[*]` stands for any index. Values never appear in a report.
//!
//! Cost: one pass over the parsed answer, each string scanned a constant
//! number of times (no backtracking), no allocation beyond the redacted
//! copies of the strings that hold something.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// The key list in force unless an operator replaces it (`pii_keys`);
/// `pii_keys_extra` adds to it. Entries are split into words like keys, so
/// `phone` also catches `phone_number`, `mobilePhone` and `phones`;
/// two-word entries also catch their words run together (`phonenumber`).
pub const DEFAULT_PII_KEYS: &[&str] = &[
    "email",
    "e_mail",
    "email_address",
    "phone",
    "phone_number",
    "telephone",
    "mobile",
    "mobile_number",
    "msisdn",
    "fax",
    "ssn",
    "social_security_number",
    "national_id",
    "tax_id",
    "password",
    "passport",
    "passport_number",
    "credit_card",
    "card_number",
    "cvv",
    "cvc",
    "iban",
    "dob",
    "date_of_birth",
    "birth_date",
];

/// Paths listed per result at most; the counts include every removal.
pub const MAX_LISTED: usize = 1000;
/// A listed path longer than this is cut (keys are vendor-controlled).
const MAX_PATH_BYTES: usize = 512;

/// What was removed: a key naming personal data, or what a detector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Key,
    Email,
    Phone,
    Card,
    Iban,
    Ssn,
}

impl Kind {
    /// The value detectors, each of which can be turned off.
    pub const DETECTORS: [Kind; 5] = [Kind::Email, Kind::Phone, Kind::Card, Kind::Iban, Kind::Ssn];
    const ALL: [Kind; 6] = [Kind::Key, Kind::Email, Kind::Phone, Kind::Card, Kind::Iban, Kind::Ssn];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Card => "card",
            Kind::Iban => "iban",
            Kind::Ssn => "ssn",
        }
    }

    /// The detector of this name (`email`, `phone`, `card`, `iban`, `ssn`).
    pub fn detector(name: &str) -> Option<Kind> {
        Kind::DETECTORS.into_iter().find(|k| k.as_str() == name)
    }

    /// What replaces a value this detector found.
    pub fn marker(self) -> &'static str {
        match self {
            Kind::Key => "[redacted:key]",
            Kind::Email => "[redacted:email]",
            Kind::Phone => "[redacted:phone]",
            Kind::Card => "[redacted:card]",
            Kind::Iban => "[redacted:iban]",
            Kind::Ssn => "[redacted:ssn]",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// What happens to a string value in which a detector found something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// The finding is replaced by `[redacted:<kind>]`; the rest stays.
    #[default]
    Redact,
    /// The whole field (object entry, array element) is dropped.
    Drop,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "redact" => Some(Action::Redact),
            "drop" => Some(Action::Drop),
            _ => None,
        }
    }
}

/// The value detectors that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detectors(u8);

impl Detectors {
    pub const NONE: Detectors = Detectors(0);

    pub fn all() -> Detectors {
        Kind::DETECTORS.into_iter().fold(Detectors::NONE, |d, k| d.with(k, true))
    }

    pub fn with(self, kind: Kind, on: bool) -> Detectors {
        if on { Detectors(self.0 | kind.bit()) } else { Detectors(self.0 & !kind.bit()) }
    }

    pub fn has(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }

    fn numeric(self) -> bool {
        self.has(Kind::Phone) || self.has(Kind::Card) || self.has(Kind::Ssn)
    }
}

impl Default for Detectors {
    fn default() -> Self {
        Detectors::all()
    }
}

/// What a cleaner is built from (see `policy.rs` for where each comes from).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The key list (entries such as `phone_number`, split like keys).
    pub keys: Vec<String>,
    pub detectors: Detectors,
    pub action: Action,
    /// Paths kept whatever the rules say.
    pub allow: Vec<String>,
}

/// Removals by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts([u64; 6]);

impl Counts {
    pub fn get(&self, kind: Kind) -> u64 {
        self.0[kind as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The kinds with at least one removal.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, u64)> + '_ {
        Kind::ALL.into_iter().map(|k| (k, self.get(k))).filter(|(_, n)| *n > 0)
    }
}

/// One thing cleaning removed: where, and what kind (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub path: String,
    pub kind: Kind,
}

/// What one cleaning removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// One entry per field and kind, in document order, at most
    /// [`MAX_LISTED`].
    pub removed: Vec<Removed>,
    /// Entries past [`MAX_LISTED`], not listed.
    pub unlisted: u64,
    /// Every removal by kind (each value a detector found counts).
    pub counts: Counts,
}

impl Report {
    fn add(&mut self, path: &str, kind: Kind, found: u64) {
        self.counts.0[kind as usize] += found;
        if self.removed.len() >= MAX_LISTED {
            self.unlisted += 1;
            return;
        }
        let path = if path.is_empty() { "$" } else { path };
        let path = if path.len() > MAX_PATH_BYTES {
            let mut cut = MAX_PATH_BYTES - 3;
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}…", &path[..cut])
        } else {
            path.to_string()
        };
        self.removed.push(Removed { path, kind });
    }
}

/// A cleaned result: JSON text and what was removed.
#[derive(Debug, Clone)]
pub struct Cleaned {
    pub text: String,
    pub report: Report,
}

#[derive(Debug, Clone)]
pub struct Cleaner {
    /// Each list entry as lowercase words.
    entries: Vec<Vec<String>>,
    /// An entry's first word (a one-word entry's plural too) → the entries.
    first: HashMap<String, Vec<usize>>,
    /// The words of entries of two or more run together (`phonenumber`),
    /// and their plurals.
    joined: HashSet<String>,
    detectors: Detectors,
    action: Action,
    allow: Vec<String>,
}

impl Cleaner {
    pub fn new(rules: Rules) -> Cleaner {
        let mut ranges = Vec::new();
        let mut entries: Vec<Vec<String>> = Vec::new();
        let mut first: HashMap<String, Vec<usize>> = HashMap::new();
        let mut joined = HashSet::new();
        for k in &rules.keys {
            split_words(k, &mut ranges);
            if ranges.is_empty() {
                continue;
            }
            let words: Vec<String> = ranges.iter().map(|&(a, b)| k[a..b].to_lowercase()).collect();
            if entries.contains(&words) {
                continue;
            }
            let e = entries.len();
            first.entry(words[0].clone()).or_default().push(e);
            if words.len() == 1 {
                first.entry(format!("{}s", words[0])).or_default().push(e);
            } else {
                joined.insert(words.concat());
                joined.insert(format!("{}s", words.concat()));
            }
            entries.push(words);
        }
        let allow = rules
            .allow
            .iter()
            .map(|p| {
                let p = p.trim();
                p.strip_prefix("$.").unwrap_or(p).to_string()
            })
            .filter(|p| !p.is_empty())
            .collect();
        Cleaner { entries, first, joined, detectors: rules.detectors, action: rules.action, allow }
    }

    /// Key rules only (every detector on, redacting), for `keys`.
    pub fn with_keys<S: AsRef<str>>(keys: &[S]) -> Cleaner {
        Cleaner::new(Rules { keys: keys.iter().map(|k| k.as_ref().to_string()).collect(), ..Rules::default() })
    }

    /// Whether the key rule catches `key` (trimmed).
    pub fn is_pii_key(&self, key: &str) -> bool {
        self.key_rule(key.trim(), &mut Scratch::default())
    }

    /// What the detectors find in `s`: (start, end, kind) byte ranges, in
    /// order, not overlapping.
    pub fn find(&self, s: &str) -> Vec<(usize, usize, Kind)> {
        let mut scratch = Scratch::default();
        self.scan(s, &mut scratch);
        scratch.spans.iter().map(|s| (s.start, s.end, s.kind)).collect()
    }

    /// Cleans a value in place and reports what was removed.
    pub fn clean(&self, v: &mut Value) -> Report {
        let mut w = Walk { c: self, path: String::new(), scratch: Scratch::default(), report: Report::default() };
        let keep = match v {
            Value::String(s) => w.string_field(s, Seg::Root),
            Value::Object(_) | Value::Array(_) => {
                w.containers(v);
                true
            }
            _ => true,
        };
        if !keep {
            *v = Value::Null;
        }
        w.report
    }

    /// Cleans JSON text; text that is not JSON is cleaned as one string.
    pub fn clean_text(&self, text: &str) -> Cleaned {
        let mut v = serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_string()));
        let report = self.clean(&mut v);
        Cleaned { text: serde_json::to_string(&v).unwrap_or_else(|_| "null".into()), report }
    }

    fn allowed(&self, path: &str) -> bool {
        let path = if path.is_empty() { "$" } else { path };
        self.allow.iter().any(|p| path_matches(p, path))
    }

    fn key_rule(&self, key: &str, scratch: &mut Scratch) -> bool {
        split_words(key, &mut scratch.words);
        // The key's words, case-folded, one after another in `lower`.
        let (lower, at) = (&mut scratch.lower, &mut scratch.lower_words);
        lower.clear();
        at.clear();
        for &(a, b) in &scratch.words {
            let from = lower.len();
            let w = &key[a..b];
            if w.is_ascii() {
                lower.extend(w.bytes().map(|c| char::from(c.to_ascii_lowercase())));
            } else {
                lower.extend(w.chars().flat_map(char::to_lowercase));
            }
            at.push((from, lower.len()));
        }
        let word = |i: usize| &lower[at[i].0..at[i].1];
        for s in 0..at.len() {
            let w = word(s);
            if self.joined.contains(w) {
                return true;
            }
            for &e in self.first.get(w).map(Vec::as_slice).unwrap_or_default() {
                let entry = &self.entries[e];
                let m = entry.len();
                // The entry's other words follow, the last one maybe plural.
                let rest = s + m <= at.len()
                    && (1..m).all(|t| {
                        let (kw, ew) = (word(s + t), entry[t].as_str());
                        kw == ew || (t == m - 1 && kw.strip_suffix('s') == Some(ew))
                    });
                if rest {
                    return true;
                }
            }
        }
        false
    }

    /// Fills `scratch.spans` with what the detectors find in `s`.
    fn scan(&self, s: &str, scratch: &mut Scratch) {
        scratch.spans.clear();
        let b = s.as_bytes();
        let d = self.detectors;
        let has_digit = b.iter().any(u8::is_ascii_digit);
        let has_at = d.has(Kind::Email) && b.contains(&b'@');
        if !has_digit && !has_at {
            return;
        }
        // E-mail addresses and IBANs first; the numeric detectors then run
        // on what lies between them, each stretch on its own (its ends count
        // as boundaries, as the redaction markers will be).
        let mut text = std::mem::take(&mut scratch.text);
        text.clear();
        if has_at {
            emails(s, &mut text);
        }
        if d.has(Kind::Iban) && has_digit {
            let from = text.len();
            ibans(s, &mut text);
            if from > 0 && text.len() > from {
                text.sort_by_key(|s| s.start);
            }
        }
        merge(&mut text);
        scratch.spans.extend_from_slice(&text);
        if d.numeric() && has_digit {
            // UUIDs (ids, not personal data) are passed over like the
            // findings above: their digit groups are not numbers.
            let mut opaque = std::mem::take(&mut scratch.opaque);
            opaque.clear();
            opaque.extend(text.iter().map(|t| (t.start, t.end)));
            let found = opaque.len();
            uuids(s, &mut opaque);
            if found > 0 && opaque.len() > found {
                opaque.sort_unstable();
            }
            let mut lo = 0;
            for i in 0..=opaque.len() {
                let hi = if i < opaque.len() { opaque[i].0.max(lo) } else { b.len() };
                numbers(s, lo, hi, d, &mut scratch.groups, &mut scratch.spans);
                if i < opaque.len() {
                    lo = lo.max(opaque[i].1);
                }
            }
            if !text.is_empty() {
                scratch.spans.sort_unstable_by_key(|s| s.start);
            }
            scratch.opaque = opaque;
        }
        scratch.text = text;
    }
}

/// A found value: bytes `start..end` of the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    kind: Kind,
}

/// Buffers reused across the strings of one cleaning.
#[derive(Default)]
struct Scratch {
    spans: Vec<Span>,
    text: Vec<Span>,
    groups: Vec<Group>,
    opaque: Vec<(usize, usize)>,
    words: Vec<(usize, usize)>,
    lower: String,
    lower_words: Vec<(usize, usize)>,
}

/// A path segment.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

fn push_seg(path: &mut String, seg: Seg<'_>) {
    match seg {
        Seg::Root => {}
        Seg::Index(i) => {
            let _ = write!(path, "[{i}]");
        }
        Seg::Key(k) => {
            let plain = !k.is_empty() && !k.contains(['.', '[', ']', '"', '*']) && !k.chars().any(char::is_control);
            if plain {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            } else {
                path.push('[');
                path.push_str(&Value::String(k.to_string()).to_string());
                path.push(']');
            }
        }
    }
}

struct Frame<'a> {
    value: &'a mut Value,
    /// The parent's path length.
    parent: usize,
    seg: Seg<'a>,
}

struct Walk<'c> {
    c: &'c Cleaner,
    /// The current path (a prefix shared by the frames on the stack).
    path: String,
    scratch: Scratch,
    report: Report,
}

impl Walk<'_> {
    /// Iterative, so a deeply nested vendor answer cannot overflow the stack.
    fn containers(&mut self, root: &mut Value) {
        let mut stack = vec![Frame { value: root, parent: 0, seg: Seg::Root }];
        while let Some(f) = stack.pop() {
            self.path.truncate(f.parent);
            push_seg(&mut self.path, f.seg);
            let here = self.path.len();
            let base = stack.len();
            match f.value {
                Value::Object(o) => {
                    self.object(o);
                    for (k, v) in o.iter_mut() {
                        if matches!(v, Value::Object(_) | Value::Array(_)) {
                            stack.push(Frame { value: v, parent: here, seg: Seg::Key(k) });
                        }
                    }
                }
                Value::Array(a) => {
                    let dropped = self.array(a);
                    let (mut orig, mut d) = (0, 0);
                    for v in a.iter_mut() {
                        while d < dropped.len() && dropped[d] == orig {
                            d += 1;
                            orig += 1;
                        }
                        if matches!(v, Value::Object(_) | Value::Array(_)) {
                            stack.push(Frame { value: v, parent: here, seg: Seg::Index(orig) });
                        }
                        orig += 1;
                    }
                }
                _ => {}
            }
            // Children in document order.
            stack[base..].reverse();
        }
    }

    /// The entries of one object (the path is the object's): key rules,
    /// string values, trimmed keys.
    fn object(&mut self, o: &mut Map<String, Value>) {
        let mut padded = false;
        o.retain(|k, v| {
            let key = k.trim();
            let here = self.path.len();
            if self.c.key_rule(key, &mut self.scratch) {
                push_seg(&mut self.path, Seg::Key(key));
                let keep = self.c.allowed(&self.path);
                if !keep {
                    self.report.add(&self.path, Kind::Key, 1);
                } else if let Value::String(s) = v {
                    trim_in_place(s);
                }
                self.path.truncate(here);
                padded |= keep && key.len() != k.len();
                return keep;
            }
            self.c.scan(key, &mut self.scratch);
            if let Some(first) = self.scratch.spans.first() {
                let kind = first.kind;
                if !self.path.is_empty() {
                    self.path.push('.');
                }
                self.path.push('*');
                self.report.add(&self.path, kind, 1);
                self.path.truncate(here);
                return false;
            }
            let keep = match v {
                Value::String(s) => self.string_field(s, Seg::Key(key)),
                _ => true,
            };
            padded |= keep && key.len() != k.len();
            keep
        });
        if padded {
            let old = std::mem::take(o);
            for (k, v) in old {
                let t = k.trim();
                if t.len() == k.len() {
                    o.insert(k, v);
                } else {
                    o.insert(t.to_string(), v);
                }
            }
        }
    }

    /// The string elements of one array; the original indices of those
    /// dropped, in order.
    fn array(&mut self, a: &mut Vec<Value>) -> Vec<usize> {
        let mut dropped = Vec::new();
        for (i, v) in a.iter_mut().enumerate() {
            if let Value::String(s) = v
                && !self.string_field(s, Seg::Index(i))
            {
                dropped.push(i);
            }
        }
        if !dropped.is_empty() {
            let (mut i, mut d) = (0, 0);
            a.retain(|_| {
                let drop = d < dropped.len() && dropped[d] == i;
                d += usize::from(drop);
                i += 1;
                !drop
            });
        }
        dropped
    }

    /// Trims and redacts one string field at `seg` under the current path;
    /// false: drop the field.
    fn string_field(&mut self, s: &mut String, seg: Seg<'_>) -> bool {
        trim_in_place(s);
        self.c.scan(s, &mut self.scratch);
        if self.scratch.spans.is_empty() {
            return true;
        }
        let here = self.path.len();
        push_seg(&mut self.path, seg);
        let allowed = self.c.allowed(&self.path);
        if !allowed {
            for kind in Kind::DETECTORS {
                let found = self.scratch.spans.iter().filter(|s| s.kind == kind).count() as u64;
                if found > 0 {
                    self.report.add(&self.path, kind, found);
                }
            }
        }
        self.path.truncate(here);
        if allowed {
            return true;
        }
        match self.c.action {
            Action::Drop => false,
            Action::Redact => {
                redact(s, &self.scratch.spans);
                true
            }
        }
    }
}

fn trim_in_place(s: &mut String) {
    let end = s.trim_end().len();
    s.truncate(end);
    let start = s.len() - s.trim_start().len();
    if start > 0 {
        s.drain(..start);
    }
}

/// Replaces each span by its marker.
fn redact(s: &mut String, spans: &[Span]) {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for sp in spans {
        match s.get(last..sp.start) {
            Some(piece) => out.push_str(piece),
            // Never: spans start and end beside ASCII bytes. Were one not
            // to, nothing of the string is kept.
            None => {
                *s = sp.kind.marker().to_string();
                return;
            }
        }
        out.push_str(sp.kind.marker());
        last = sp.end;
    }
    out.push_str(s.get(last..).unwrap_or_default());
    *s = out;
}

/// `pattern` (an allow entry) names `path`; `[*]` in it stands for any index.
fn path_matches(pattern: &str, path: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), path.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < p.len() {
        if p[i..].starts_with(b"[*]") {
            if j >= s.len() || s[j] != b'[' {
                return false;
            }
            let mut k = j + 1;
            while k < s.len() && s[k].is_ascii_digit() {
                k += 1;
            }
            if k == j + 1 || k >= s.len() || s[k] != b']' {
                return false;
            }
            i += 3;
            j = k + 1;
            continue;
        }
        if j >= s.len() || p[i] != s[j] {
            return false;
        }
        i += 1;
        j += 1;
    }
    j == s.len()
}

// ---- keys ----

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Lower,
    Upper,
    Digit,
    Other,
}

fn class(c: char) -> Class {
    if c.is_uppercase() {
        Class::Upper
    } else if c.is_alphabetic() {
        Class::Lower
    } else if c.is_numeric() {
        Class::Digit
    } else {
        Class::Other
    }
}

/// The words of a key as byte ranges: split at every character that is not
/// a letter or digit, at lower→upper (`customerEmail`), before the last
/// capital of a run followed by a lowercase letter (`SSNLast`), and between
/// letters and digits (`phone2`).
fn split_words(key: &str, out: &mut Vec<(usize, usize)>) {
    out.clear();
    let mut start: Option<usize> = None;
    let mut prev = Class::Other;
    let mut it = key.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let cl = class(c);
        if cl == Class::Other {
            if let Some(s) = start.take() {
                out.push((s, i));
            }
            prev = cl;
            continue;
        }
        let next = it.peek().map(|&(_, n)| class(n)).unwrap_or(Class::Other);
        let boundary = match (prev, cl) {
            (Class::Lower, Class::Upper) => true,
            (Class::Upper, Class::Upper) => next == Class::Lower,
            (Class::Digit, Class::Lower | Class::Upper) | (Class::Lower | Class::Upper, Class::Digit) => true,
            _ => false,
        };
        match start {
            None => start = Some(i),
            Some(s) if boundary => {
                out.push((s, i));
                start = Some(i);
            }
            _ => {}
        }
        prev = cl;
    }
    if let Some(s) = start {
        out.push((s, key.len()));
    }
}

// ---- detectors ----
//
// Written by hand: the rules need more than a pattern match. A digit run is
// cut into groups and every grouping of up to 19 digits is checked against
// the card (Luhn), SSN and phone formats, IBANs against their country's
// length and mod-97, e-mail domains label by label; `regex` finds the
// leftmost match of a pattern and cannot try the other candidates inside a
// match that fails its checksum, and no maintained crate finds these values
// inside free text (`phonenumber`, `iban_validate`, `email_address` each
// parse one whole value). Each scanner looks at a byte a bounded number of
// times: linear in the string.

/// A letter or digit (of any script) or `_`: a number touching one is part
/// of a word.
fn glue(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The character before byte `i` of `s`.
fn before(s: &str, i: usize) -> Option<char> {
    s.get(..i)?.chars().next_back()
}

/// The character at byte `i` of `s`.
fn at(s: &str, i: usize) -> Option<char> {
    s.get(i..)?.chars().next()
}

fn local_char(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-' | '\'')
    } else {
        c.is_alphanumeric()
    }
}

fn label_char(c: char) -> bool {
    c.is_alphanumeric() || c == '-'
}

/// `local@domain.tld`: the local part as far left as its characters go
/// (leading dots aside), the domain the longest run of two or more labels
/// that ends in a top-level domain of two or more letters.
fn emails(s: &str, out: &mut Vec<Span>) {
    let b = s.as_bytes();
    for (at_sign, _) in b.iter().enumerate().filter(|(_, c)| **c == b'@') {
        let mut l = at_sign;
        while let Some(c) = before(s, l).filter(|c| local_char(*c)) {
            l -= c.len_utf8();
        }
        while l < at_sign && b[l] == b'.' {
            l += 1;
        }
        if l == at_sign {
            continue;
        }
        let (mut i, mut labels, mut end) = (at_sign + 1, 0, None);
        loop {
            let (from, mut chars, mut letters) = (i, 0, true);
            while let Some(c) = at(s, i).filter(|c| label_char(*c)) {
                chars += 1;
                letters &= c.is_alphabetic();
                i += c.len_utf8();
            }
            if i == from {
                break;
            }
            labels += 1;
            if labels >= 2 && chars >= 2 && letters {
                end = Some(i);
            }
            if b.get(i) == Some(&b'.') {
                i += 1;
            } else {
                break;
            }
        }
        if let Some(end) = end {
            out.push(Span { start: l, end, kind: Kind::Email });
        }
    }
}

/// UUIDs (`8-4-4-4-12` hex digits) not part of a longer word, as byte ranges.
fn uuids(s: &str, out: &mut Vec<(usize, usize)>) {
    const SHAPE: [usize; 5] = [8, 4, 4, 4, 12];
    let b = s.as_bytes();
    let mut i = 0;
    while i + 36 <= b.len() {
        if !b[i].is_ascii_hexdigit() || before(s, i).is_some_and(glue) {
            i += 1;
            continue;
        }
        let mut k = i;
        let fits = SHAPE.iter().enumerate().all(|(n, &len)| {
            if n > 0 {
                if b.get(k) != Some(&b'-') {
                    return false;
                }
                k += 1;
            }
            let ok = b.get(k..k + len).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            k += len;
            ok
        });
        if fits && !at(s, k).is_some_and(glue) {
            out.push((i, k));
            i = k;
        } else {
            i += 1;
        }
    }
}

/// IBAN lengths by country (the SWIFT registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HN", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

/// IBANs, electronic (`DE89370400440532013000`) or printed in groups of
/// four (`DE89 3704 0044 0532 0130 00`), of a known country's length, with
/// a valid mod-97 checksum, not part of a longer word.
fn ibans(s: &str, out: &mut Vec<Span>) {
    let b = s.as_bytes();
    let mut i = 0;
    while i + 15 <= b.len() {
        let starts = b[i].is_ascii_alphabetic()
            && !before(s, i).is_some_and(glue)
            && b[i + 1].is_ascii_alphabetic()
            && b[i + 2].is_ascii_digit()
            && b[i + 3].is_ascii_digit();
        if starts {
            let cc = [b[i].to_ascii_uppercase(), b[i + 1].to_ascii_uppercase()];
            if let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(c, _)| **c == cc)
                && let Some(end) = iban_at(s, i, len)
            {
                out.push(Span { start: i, end, kind: Kind::Iban });
                i = end;
                continue;
            }
        }
        i += 1;
    }
}

fn iban_at(s: &str, start: usize, len: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut chars = [0u8; 34];
    let (mut n, mut i, mut spaced) = (0, start, None);
    while n < len {
        if n > 0 && n.is_multiple_of(4) {
            let space = b.get(i) == Some(&b' ');
            if *spaced.get_or_insert(space) != space {
                return None;
            }
            i += usize::from(space);
        }
        let c = *b.get(i)?;
        if !c.is_ascii_alphanumeric() {
            return None;
        }
        chars[n] = c.to_ascii_uppercase();
        n += 1;
        i += 1;
    }
    if at(s, i).is_some_and(glue) {
        return None;
    }
    // Mod 97 of the number made of the BBAN, the country (A=10 … Z=35) and
    // the check digits.
    let mut rem = 0u32;
    for &c in chars[4..len].iter().chain(&chars[..4]) {
        rem = if c.is_ascii_digit() {
            (rem * 10 + u32::from(c - b'0')) % 97
        } else {
            (rem * 100 + u32::from(c - b'A' + 10)) % 97
        };
    }
    (rem == 1).then_some(i)
}

/// A group of digits in a run, bare or in parentheses.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    /// Bytes of the group, parentheses included.
    start: usize,
    end: usize,
    /// The digits.
    ds: usize,
    de: usize,
    paren: bool,
    /// The separator before it (`b' '`, `b'-'`, `b'.'`; 0: none or first).
    sep: u8,
}

impl Group {
    fn len(&self) -> usize {
        self.de - self.ds
    }
}

fn group_at(b: &[u8], i: usize, hi: usize) -> Option<Group> {
    if i < hi && b[i].is_ascii_digit() {
        let mut k = i;
        while k < hi && b[k].is_ascii_digit() {
            k += 1;
        }
        return Some(Group { start: i, end: k, ds: i, de: k, paren: false, sep: 0 });
    }
    if i < hi && b[i] == b'(' {
        let mut k = i + 1;
        while k < hi && b[k].is_ascii_digit() {
            k += 1;
        }
        if k > i + 1 && k < hi && b[k] == b')' {
            return Some(Group { start: i, end: k + 1, ds: i + 1, de: k, paren: true, sep: 0 });
        }
    }
    None
}

/// Card numbers, SSNs and phone numbers in `b[lo..hi]`. The stretch is cut
/// into runs of digit groups joined by one separator (space, `-`, `.`) or
/// parentheses; a group touching a letter, digit or `_` is part of a word
/// and ends its run. Within a run, from each group on, the longest grouping
/// that some format accepts is taken.
fn numbers(s: &str, lo: usize, hi: usize, d: Detectors, groups: &mut Vec<Group>, out: &mut Vec<Span>) {
    let b = s.as_bytes();
    let mut i = lo;
    while i < hi {
        let c = b[i];
        if !(c.is_ascii_digit() || c == b'+' || c == b'(') {
            i += 1;
            continue;
        }
        let prev = if i > lo { before(s, i) } else { None };
        let next_starts_group = |k: usize| k < hi && (b[k].is_ascii_digit() || b[k] == b'(');
        let plus = c == b'+'
            && !prev.is_some_and(|p| p.is_alphabetic() || p == '_')
            && next_starts_group(i + 1)
            && group_at(b, i + 1, hi).is_some();
        let starts = plus || (!prev.is_some_and(glue) && (c.is_ascii_digit() || group_at(b, i, hi).is_some()));
        if !starts {
            i += 1;
            continue;
        }
        groups.clear();
        let mut j = i + usize::from(plus);
        let mut sep = 0;
        let mut resume = None;
        while let Some(mut g) = group_at(b, j, hi) {
            // (A digit right after `)` continues the run: `(0)20`.)
            if g.end < hi && at(s, g.end).is_some_and(|c| c.is_alphabetic() || c == '_') {
                // Part of a word: the run ends before it, and the word is skipped.
                resume = Some(g.end);
                break;
            }
            g.sep = sep;
            groups.push(g);
            j = g.end;
            if j + 1 < hi && matches!(b[j], b' ' | b'-' | b'.') && next_starts_group(j + 1) {
                sep = b[j];
                j += 1;
            } else if j < hi && (b[j] == b'(' || (g.paren && b[j].is_ascii_digit())) {
                sep = 0;
            } else {
                break;
            }
        }
        runs(b, groups, plus.then_some(i), d, out);
        i = resume.unwrap_or(j).max(i + 1);
    }
}

/// Takes, from each group on, the longest grouping a format accepts.
fn runs(b: &[u8], g: &[Group], plus: Option<usize>, d: Detectors, out: &mut Vec<Span>) {
    let mut i = 0;
    while i < g.len() {
        let mut best = None;
        let mut digits = 0;
        for j in i..g.len() {
            digits += g[j].len();
            if digits > 19 {
                break;
            }
            if let Some(kind) = classify(b, &g[i..=j], digits, plus.is_some() && i == 0, d) {
                best = Some((j, kind));
            }
        }
        match best {
            Some((j, kind)) => {
                let start = if i == 0 { plus.unwrap_or(g[0].start) } else { g[i].start };
                out.push(Span { start, end: g[j].end, kind });
                i = j + 1;
            }
            None => i += 1,
        }
    }
}

fn classify(b: &[u8], g: &[Group], digits: usize, plus: bool, d: Detectors) -> Option<Kind> {
    let no_parens = g.iter().all(|x| !x.paren);
    let one_sep = |allowed: &[u8]| g.len() == 1 || g[1..].iter().all(|x| x.sep == g[1].sep && allowed.contains(&x.sep));
    let digit_at = |k: usize| {
        let mut k = k;
        g.iter().find_map(|x| {
            if k < x.len() {
                Some(b[x.ds + k] - b'0')
            } else {
                k -= x.len();
                None
            }
        })
    };
    if d.has(Kind::Card) && !plus && no_parens && (13..=19).contains(&digits) && one_sep(b" -") {
        let n = g.len();
        let shape = n == 1
            || (n >= 4 && g[..n - 1].iter().all(|x| x.len() == 4) && (1..=4).contains(&g[n - 1].len()))
            || (n == 3 && g[0].len() == 4 && g[1].len() == 6 && (4..=5).contains(&g[2].len()));
        if shape && card_prefix(&digit_at, digits) && luhn(g.iter().flat_map(|x| b[x.ds..x.de].iter().copied())) {
            return Some(Kind::Card);
        }
    }
    if d.has(Kind::Ssn) && !plus && no_parens && lens_are(g, &[3, 2, 4]) && one_sep(b" -") {
        let num = |x: &Group| b[x.ds..x.de].iter().fold(0u32, |n, c| n * 10 + u32::from(c - b'0'));
        let (area, group, serial) = (num(&g[0]), num(&g[1]), num(&g[2]));
        if area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 {
            return Some(Kind::Ssn);
        }
    }
    if d.has(Kind::Phone) && phone(b, g, digits, plus) {
        return Some(Kind::Phone);
    }
    None
}

/// Phone formats: `+` and 8 to 15 digits in any grouping (E.164); the
/// North American `(555) 123-4567`, `555-123-4567`, `1 555 123 4567`; an
/// area code in parentheses, `(11) 91234-5678`, `(020) 7946 0958`; and
/// national numbers with a trunk `0`: `020 7946 0958`, `06 12 34 56 78`,
/// `0171 1234567` (or `00` and the country, up to 15 digits).
fn phone(b: &[u8], g: &[Group], digits: usize, plus: bool) -> bool {
    if plus {
        return (8..=15).contains(&digits);
    }
    let n = g.len();
    let first = b[g[0].ds];
    let rest_bare = g[1..].iter().all(|x| !x.paren);
    let nanp = |g: &[Group]| {
        g.len() == 3 && g[0].len() == 3 && g[1].len() == 3 && g[2].len() == 4 && !g[1].paren && !g[2].paren
    };
    if nanp(g) || (n == 4 && g[0].len() == 1 && first == b'1' && !g[0].paren && nanp(&g[1..])) {
        return true;
    }
    if g[0].paren
        && rest_bare
        && n >= 2
        && g[1..].iter().all(|x| x.len() >= 2)
        && (8..=12).contains(&digits)
        && ((2..=3).contains(&g[0].len()) || (first == b'0' && g[0].len() <= 5))
    {
        return true;
    }
    let max = if g[0].len() >= 2 && &b[g[0].ds..g[0].ds + 2] == b"00" { 15 } else { 12 };
    // Separators between bare groups all alike (the one after a leading
    // parenthesised group aside).
    let seps = g[1..].iter().skip(usize::from(g[0].paren)).map(|x| x.sep);
    let mut seps = seps.peekable();
    let one_kind = match seps.peek().copied() {
        None => true,
        Some(s) => s != 0 && seps.all(|x| x == s),
    };
    // Not the SSN shape (3-2-4), nor a first group of zeros.
    first == b'0'
        && n >= 2
        && !lens_are(g, &[3, 2, 4])
        && b[g[0].ds..g[0].de].iter().any(|c| *c != b'0')
        && rest_bare
        && (2..=5).contains(&g[0].len())
        && g.iter().all(|x| x.len() >= 2 && x.len() <= 8)
        && (9..=max).contains(&digits)
        && one_kind
}

fn lens_are(g: &[Group], lens: &[usize]) -> bool {
    g.iter().map(Group::len).eq(lens.iter().copied())
}

/// Issuer prefixes and lengths of the card networks: Visa 4 (13, 16, 19),
/// Mastercard 51–55 and 2221–2720 (16), Amex 34/37 (15), Diners 30/36/38/39
/// (14–19), JCB 35 (16–19), Maestro 50/56–58 and 6 (13–19), Discover and
/// UnionPay 6 (16–19). Compact timestamps (`20240115103000`, epoch
/// milliseconds `17…`) fall outside.
fn card_prefix(digit_at: &dyn Fn(usize) -> Option<u8>, len: usize) -> bool {
    let (Some(a), Some(b), Some(c), Some(d)) = (digit_at(0), digit_at(1), digit_at(2), digit_at(3)) else {
        return false;
    };
    let four = u32::from(a) * 1000 + u32::from(b) * 100 + u32::from(c) * 10 + u32::from(d);
    match a {
        2 => (2221..=2720).contains(&four) && len == 16,
        3 => match b {
            4 | 7 => len == 15,
            0 | 6 | 8 | 9 => (14..=19).contains(&len),
            5 => (16..=19).contains(&len),
            _ => false,
        },
        4 => matches!(len, 13 | 16 | 19),
        5 => ((1..=5).contains(&b) && len == 16) || matches!(b, 0 | 6..=8),
        6 => true,
        _ => false,
    }
}

fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// Joins overlapping spans (sorted by start) into one, of the first's kind.
fn merge(spans: &mut Vec<Span>) {
    let mut w = 0;
    for r in 0..spans.len() {
        let s = spans[r];
        if w > 0 && s.start < spans[w - 1].end {
            spans[w - 1].end = spans[w - 1].end.max(s.end);
        } else {
            spans[w] = s;
            w += 1;
        }
    }
    spans.truncate(w);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn cleaner() -> Cleaner {
        Cleaner::with_keys(DEFAULT_PII_KEYS)
    }

    fn with(rules: Rules) -> Cleaner {
        Cleaner::new(Rules { keys: DEFAULT_PII_KEYS.iter().map(|k| k.to_string()).collect(), ..rules })
    }

    /// (path, kind) of each listed removal.
    fn listed(r: &Report) -> Vec<(&str, &str)> {
        r.removed.iter().map(|x| (x.path.as_str(), x.kind.as_str())).collect()
    }

    /// What the detectors make of `s`, as the cleaned string.
    fn redacted(c: &Cleaner, s: &str) -> String {
        let mut v = Value::String(s.to_string());
        c.clean(&mut v);
        v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
    }

    #[test]
    fn keys_caught_and_kept() {
        let c = cleaner();
        let caught = [
            "email",
            " Email ",
            "EMAIL",
            "owner_email",
            "customerEmail",
            "CustomerEMail",
            "e-mail",
            "E_Mail_Address",
            "emailAddress",
            "emails",
            "Contact.Phone",
            "contact phone",
            "phone_number_2",
            "phoneNumber2",
            "phonenumber",
            "mobilePhone",
            "telephone",
            "telephone_company_name",
            "SSN",
            "userSSN",
            "SSNLast4",
            "creditCardNumber",
            "credit-card",
            "creditcard",
            "DateOfBirth",
            "date_of_birth",
            "dob",
            "IBAN",
            "payout_iban",
            "passport_no",
            "tax_id",
            "password",
            "cvv",
            "ssns",
            "passports_office",
        ];
        let kept = [
            "emailed_at",
            "emailing",
            "mail",
            "e",
            "name",
            "address",
            "city",
            "note",
            "phoneme",
            "microphone",
            "headphones_count",
            "cardinal",
            "ibanez",
            "dobson",
            "taxonomy",
            "query",
            "score",
            "",
            "___",
        ];
        for k in caught {
            assert!(c.is_pii_key(k), "{k:?} should be caught");
        }
        for k in kept {
            assert!(!c.is_pii_key(k), "{k:?} should be kept");
        }
        // A one-word list entry matches whole words only, anywhere in the key.
        let c = Cleaner::with_keys(&["pin"]);
        assert!(c.is_pii_key("card_pin") && c.is_pii_key("PIN2") && c.is_pii_key("pins") && c.is_pii_key("pinCode"));
        assert!(!c.is_pii_key("pinned") && !c.is_pii_key("spin") && !c.is_pii_key("pinyin"));
    }

    #[test]
    fn words_of_keys() {
        let words = |k: &str| {
            let mut w = Vec::new();
            split_words(k, &mut w);
            w.into_iter().map(|(a, b)| k[a..b].to_string()).collect::<Vec<_>>()
        };
        assert_eq!(words("customerEmail"), ["customer", "Email"]);
        assert_eq!(words("SSNLast4"), ["SSN", "Last", "4"]);
        assert_eq!(words("ownerEMail"), ["owner", "E", "Mail"]);
        assert_eq!(words(" Contact.Phone-no_2 "), ["Contact", "Phone", "no", "2"]);
        assert_eq!(words("HTTPServer"), ["HTTP", "Server"]);
        assert_eq!(words("größeÄnderung"), ["größe", "Änderung"]);
    }

    #[test]
    fn trims_and_drops_at_any_depth_and_reports_paths() {
        let mut v = json!({
            "name": "  Ada ", "Email": "a@b.c", " city ": " London ",
            "owner": {"email": "x", "note": " keep "},
            "contact": {"phone_number_2": "1", "emailed_at": "2024-01-15T10:30:00Z"},
            "tags": [" a ", {"ssn": "x", "k": " v "}], "n": 3,
            "odd.key": {"Phone": 1}
        });
        let r = cleaner().clean(&mut v);
        assert_eq!(
            v,
            json!({
                "name": "Ada", "city": "London", "owner": {"note": "keep"},
                "contact": {"emailed_at": "2024-01-15T10:30:00Z"},
                "tags": ["a", {"k": "v"}], "n": 3, "odd.key": {}
            })
        );
        assert_eq!(
            listed(&r),
            [
                ("Email", "key"),
                ("owner.email", "key"),
                ("contact.phone_number_2", "key"),
                ("tags[1].ssn", "key"),
                ("[\"odd.key\"].Phone", "key"),
            ]
        );
        assert_eq!((r.counts.get(Kind::Key), r.counts.total(), r.unlisted), (5, 5, 0));
    }

    #[test]
    fn detectors_find_each_kind_inside_strings() {
        let c = cleaner();
        let cases: &[(&str, &str)] = &[
            // e-mail
            ("ada@example.com", "[redacted:email]"),
            ("write to a.b+tag@sub.example.co.uk.", "write to [redacted:email]."),
            ("O'Brien@example.ie, thanks", "[redacted:email], thanks"),
            ("<user@münchen.de>", "<[redacted:email]>"),
            // phone
            ("+1 555 0100", "[redacted:phone]"),
            ("call +44 20 7946 0958 now", "call [redacted:phone] now"),
            ("+4915112345678", "[redacted:phone]"),
            ("+44 (0)20 7946 0958", "[redacted:phone]"),
            ("(555) 123-4567", "[redacted:phone]"),
            ("tel:555-123-4567", "tel:[redacted:phone]"),
            ("555.123.4567", "[redacted:phone]"),
            ("1-800-555-0100", "[redacted:phone]"),
            ("020 7946 0958", "[redacted:phone]"),
            ("06 12 34 56 78", "[redacted:phone]"),
            ("0171 1234567", "[redacted:phone]"),
            ("(020) 7946 0958", "[redacted:phone]"),
            ("(11) 91234-5678", "[redacted:phone]"),
            ("0044 20 7946 0958", "[redacted:phone]"),
            // card (Luhn)
            ("4111 1111 1111 1111", "[redacted:card]"),
            ("card 4111-1111-1111-1111 exp 12/29", "card [redacted:card] exp 12/29"),
            ("4111111111111111", "[redacted:card]"),
            ("5555555555554444", "[redacted:card]"),
            ("2223003122003222", "[redacted:card]"),
            ("3782 822463 10005", "[redacted:card]"),
            ("378282246310005", "[redacted:card]"),
            ("6011111111111117", "[redacted:card]"),
            ("30569309025904", "[redacted:card]"),
            // IBAN (mod 97)
            ("DE89370400440532013000", "[redacted:iban]"),
            ("IBAN: DE89 3704 0044 0532 0130 00.", "IBAN: [redacted:iban]."),
            ("GB82WEST12345698765432", "[redacted:iban]"),
            ("fr1420041010050500013m02606", "[redacted:iban]"),
            ("NL91ABNA0417164300", "[redacted:iban]"),
            // SSN
            ("ssn 078-05-1120 on file", "ssn [redacted:ssn] on file"),
            ("123 45 6789", "[redacted:ssn]"),
            // several in one string
            (
                "ada@example.com / +1 555 0100 / 4111111111111111",
                "[redacted:email] / [redacted:phone] / [redacted:card]",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redacted(&c, input), *want, "{input:?}");
        }
    }

    #[test]
    fn order_ids_timestamps_and_near_misses_stay() {
        let c = cleaner();
        let kept = [
            "order 4111111111111112",
            "4111 1111 1111 1112",
            "1700000000000",
            "1712345678901234",
            "20240115103000",
            "1700000000",
            "2024-01-15",
            "2024-01-15T10:30:00.123Z",
            "2024-01-15 10:30:00",
            "15.01.2024",
            "01.15.2024 10:30",
            "ORD-2024-000123",
            "INV000123-4567",
            "000123-4567",
            "order 123456789",
            "192.168.100.200",
            "v1.2.3",
            "+1 2",
            "1,234,567.89",
            "1 000 000",
            "UTC+05:30",
            "score +12.5%",
            "DE89370400440532013001",
            "XX89370400440532013000",
            "DE8937040044053201300",
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123456789",
            "@handle",
            "a@b",
            "a@localhost",
            "x@y.z",
            "foo@bar.c0m",
            "ada at example dot com",
            "id4111111111111111",
            "4111111111111111x",
            "(555) 123-4567ext",
            "01a21092-0123-7456-8789-67c18ef9b1d5",
            "id 00000000-0123-7456-8789-012345678901 ok",
        ];
        for s in kept {
            assert_eq!(redacted(&c, s), s, "{s:?} was changed");
            assert!(c.find(s).is_empty(), "{s:?}");
        }
    }

    #[test]
    fn each_detector_can_be_turned_off() {
        let text = "ada@example.com +1 555 0100 4111111111111111 DE89370400440532013000 078-05-1120";
        for kind in Kind::DETECTORS {
            let c = with(Rules { detectors: Detectors::all().with(kind, false), ..Rules::default() });
            let found: Vec<Kind> = c.find(text).into_iter().map(|(_, _, k)| k).collect();
            let expected: Vec<Kind> = Kind::DETECTORS.into_iter().filter(|k| *k != kind).collect();
            assert_eq!(found, expected, "{kind:?} off");
        }
        let none = with(Rules { detectors: Detectors::NONE, ..Rules::default() });
        assert_eq!(redacted(&none, text), text);
    }

    #[test]
    fn redact_keeps_the_field_and_drop_removes_it() {
        let answer = json!({
            "bio": " reach me at ada@example.com ", "city": "London",
            "notes": ["fine", "call +44 20 7946 0958", {"x": "4111111111111111"}],
            "id": "ORD-2024-000123"
        });
        let mut v = answer.clone();
        let r = cleaner().clean(&mut v);
        assert_eq!(
            v,
            json!({
                "bio": "reach me at [redacted:email]", "city": "London",
                "notes": ["fine", "call [redacted:phone]", {"x": "[redacted:card]"}],
                "id": "ORD-2024-000123"
            })
        );
        assert_eq!(listed(&r), [("bio", "email"), ("notes[1]", "phone"), ("notes[2].x", "card")]);

        let mut v = answer;
        let r = with(Rules { action: Action::Drop, ..Rules::default() }).clean(&mut v);
        assert_eq!(v, json!({"city": "London", "notes": ["fine", {}], "id": "ORD-2024-000123"}));
        // Paths are those of the vendor's answer: the object was element 2.
        assert_eq!(listed(&r), [("bio", "email"), ("notes[1]", "phone"), ("notes[2].x", "card")]);

        let mut root = json!("ada@example.com");
        let r = with(Rules { action: Action::Drop, ..Rules::default() }).clean(&mut root);
        assert_eq!((root, listed(&r)), (Value::Null, vec![("$", "email")]));
    }

    #[test]
    fn one_entry_per_field_and_kind_and_every_finding_counted() {
        let mut v = json!({"to": "a@example.com, b@example.com; +1 555 0100"});
        let r = cleaner().clean(&mut v);
        assert_eq!(v["to"], "[redacted:email], [redacted:email]; [redacted:phone]");
        assert_eq!(listed(&r), [("to", "email"), ("to", "phone")]);
        assert_eq!((r.counts.get(Kind::Email), r.counts.get(Kind::Phone)), (2, 1));
    }

    #[test]
    fn keys_holding_personal_data_are_dropped_without_showing_it() {
        let mut v = json!({"by_user": {"ada@example.com": {"n": 1}, "bob": {"n": 2}}});
        let r = cleaner().clean(&mut v);
        assert_eq!(v, json!({"by_user": {"bob": {"n": 2}}}));
        assert_eq!(listed(&r), [("by_user.*", "email")]);
        assert!(!format!("{r:?}").contains("ada@"), "{r:?}");
    }

    #[test]
    fn allow_paths_keep_fields_the_rules_would_drop() {
        let c = with(Rules {
            allow: vec![
                "record.email_domain".into(),
                "record.contacts[*].phone".into(),
                "$.support".into(),
                "list[1]".into(),
            ],
            ..Rules::default()
        });
        let mut v = json!({
            "record": {
                "email_domain": " example.com ", "email": "ada@example.com",
                "contacts": [{"phone": "+1 555 0100", "fax": "+1 555 0101"}, {"phone": "+1 555 0102"}],
                "nested": {"email_domain": "example.org"}
            },
            "support": "help@vendor.example",
            "list": ["a@example.com", "b@example.com"]
        });
        let r = c.clean(&mut v);
        assert_eq!(
            v,
            json!({
                "record": {
                    "email_domain": "example.com",
                    "contacts": [{"phone": "+1 555 0100"}, {"phone": "+1 555 0102"}],
                    "nested": {}
                },
                "support": "help@vendor.example",
                "list": ["[redacted:email]", "b@example.com"]
            })
        );
        assert_eq!(
            listed(&r),
            [
                ("record.email", "key"),
                ("record.contacts[0].fax", "key"),
                ("record.nested.email_domain", "key"),
                ("list[0]", "email"),
            ]
        );
        assert!(path_matches("a[*].b", "a[12].b") && !path_matches("a[*].b", "a.b") && !path_matches("a[*]", "a[]"));
    }

    #[test]
    fn padded_keys_are_trimmed_and_the_later_of_two_wins() {
        let mut v: Value = serde_json::from_str(r#"{" name ": "a", "name": "b", " city": {" zip ": " 1 "}}"#).unwrap();
        let r = cleaner().clean(&mut v);
        assert_eq!(v, json!({"name": "b", "city": {"zip": "1"}}));
        assert!(r.removed.is_empty());
    }

    #[test]
    fn long_lists_are_cut_and_counted() {
        let items: Vec<Value> = (0..MAX_LISTED + 5).map(|i| json!({"email": i})).collect();
        let mut v = Value::Array(items);
        let r = cleaner().clean(&mut v);
        assert_eq!((r.removed.len(), r.unlisted, r.counts.get(Kind::Key)), (MAX_LISTED, 5, MAX_LISTED as u64 + 5));
        let long = "k".repeat(4 * MAX_PATH_BYTES);
        let mut v = json!({ long: {"email": 1} });
        let r = cleaner().clean(&mut v);
        assert!(r.removed[0].path.len() <= MAX_PATH_BYTES && r.removed[0].path.ends_with('…'));
    }

    #[test]
    fn clean_text_cleans_text_that_is_not_json_as_one_string() {
        let c = cleaner();
        assert_eq!(c.clean_text("  hi ").text, "\"hi\"");
        let out = c.clean_text(" mail ada@example.com ");
        assert_eq!(out.text, "\"mail [redacted:email]\"");
        assert_eq!(listed(&out.report), [("$", "email")]);
        let out = c.clean_text(r#"{"a": {"email": "x"}}"#);
        assert_eq!((out.text.as_str(), listed(&out.report)), (r#"{"a":{}}"#, vec![("a.email", "key")]));
    }

    #[test]
    fn pathological_inputs_are_handled_in_one_pass() {
        // Shapes that would make a backtracking matcher or a naive rescan
        // quadratic; each is 200 KB and must simply come back.
        let c = cleaner();
        for unit in ["a@", "@a.", "1-", "(1)", "+1 ", "DE89 ", "1 2 3 4 5 6 7 8 9 0 ", "a.b@c.d", "4111"] {
            let s = unit.repeat(200_000 / unit.len());
            let out = redacted(&c, &s);
            assert!(!out.is_empty());
            assert!(c.find(&out).is_empty(), "{unit:?} left a finding behind");
        }
    }

    // ---- properties ----

    /// Strings made of fragments of personal data, near misses, separators
    /// and markers, glued in any order.
    fn arb_text() -> impl Strategy<Value = String> {
        let fixed = prop::sample::select(vec![
            "ada@example.com",
            "x.y@ex.co",
            "@",
            ".com",
            "example",
            "+1 555 0100",
            "+44 (0)20 7946 0958",
            "(555) 123-4567",
            "555-123-4567",
            "020 7946 0958",
            "4111 1111 1111 1111",
            "4111111111111111",
            "378282246310005",
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "078-05-1120",
            "2024-01-15",
            "1700000000000",
            "[redacted:phone]",
            "01a21092-0123-7456-8789-67c18ef9b1d5",
            " ",
            "-",
            ".",
            "(",
            ")",
            "+",
            "_",
            ",",
            ":",
            "'",
            "ü",
            "\u{a0}",
            "€",
            "é1",
            "  ",
        ]);
        let fragment = prop_oneof![fixed.prop_map(String::from), "[0-9]{1,5}", "[a-zA-Z]{1,3}"];
        prop_oneof![
            3 => prop::collection::vec(fragment, 0..14).prop_map(|v| v.concat()),
            1 => "[0-9a-fA-F@.+() _:'ü-]{0,48}",
        ]
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            arb_text().prop_map(Value::String),
        ];
        let key = prop_oneof![
            Just("email".to_string()),
            Just(" Phone ".to_string()),
            Just("ownerEmail".to_string()),
            Just("emailed_at".to_string()),
            Just("ada@example.com".to_string()),
            "[a-z ]{1,6}",
        ];
        leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Something cleaning should have removed, still in `v`.
    fn leftover(v: &Value, c: &Cleaner) -> Option<String> {
        match v {
            Value::String(s) if s.trim() != s || !c.find(s).is_empty() => Some(s.clone()),
            Value::Array(a) => a.iter().find_map(|x| leftover(x, c)),
            Value::Object(o) => o.iter().find_map(|(k, x)| {
                if k.trim() != k || c.is_pii_key(k) || !c.find(k).is_empty() { Some(k.clone()) } else { leftover(x, c) }
            }),
            _ => None,
        }
    }

    /// What a string becomes: the trimmed text with each finding replaced.
    fn expected_string(c: &Cleaner, s: &str) -> String {
        let t = s.trim();
        let mut out = String::new();
        let mut last = 0;
        for (a, b, kind) in c.find(t) {
            out.push_str(&t[last..a]);
            out.push_str(kind.marker());
            last = b;
        }
        out.push_str(&t[last..]);
        out
    }

    /// Cleaning by the definition, structurally: keys dropped by the rule or
    /// for their text, strings trimmed and redacted, the rest as it was.
    fn reference(c: &Cleaner, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(expected_string(c, s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| reference(c, x)).collect()),
            Value::Object(o) => {
                let mut out = Map::new();
                for (k, x) in o {
                    let k = k.trim();
                    if !c.is_pii_key(k) && c.find(k).is_empty() {
                        out.insert(k.to_string(), reference(c, x));
                    }
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the string, nothing a detector finds is left in it, and
        /// only what a detector found changed.
        #[test]
        fn no_finding_survives_and_nothing_else_changes(s in arb_text()) {
            let c = cleaner();
            let out = redacted(&c, &s);
            prop_assert!(c.find(&out).is_empty(), "{:?} -> {:?} still holds {:?}", s, out, c.find(&out));
            prop_assert_eq!(&out, &expected_string(&c, &s));
        }

        /// A planted value between words is always found whole, whatever
        /// surrounds it.
        #[test]
        fn planted_values_are_always_removed(
            pre in "[a-zA-Z ,;:!?]{0,12}",
            post in "[a-zA-Z ,;:!?]{0,12}",
            planted in prop::sample::select(vec![
                ("ada.lovelace@example.org", Kind::Email),
                ("+44 20 7946 0958", Kind::Phone),
                ("(555) 123-4567", Kind::Phone),
                ("06 12 34 56 78", Kind::Phone),
                ("5555 5555 5555 4444", Kind::Card),
                ("GB82WEST12345698765432", Kind::Iban),
                ("078-05-1120", Kind::Ssn),
            ]),
        ) {
            let c = cleaner();
            let (value, kind) = planted;
            let out = redacted(&c, &format!("{pre} {value} {post}"));
            prop_assert!(!out.contains(value), "{}", out);
            prop_assert!(out.contains(kind.marker()), "{}", out);
        }

        /// Cleaned values hold no personal data by key or detector and no
        /// padding, match the definition, and a second cleaning changes
        /// nothing and reports nothing.
        #[test]
        fn cleaned_values_match_the_definition_and_are_stable(v in arb_json()) {
            let c = cleaner();
            let mut once = v.clone();
            c.clean(&mut once);
            prop_assert_eq!(leftover(&once, &c), None, "{}", once);
            prop_assert_eq!(&once, &reference(&c, &v));
            let mut twice = once.clone();
            let again = c.clean(&mut twice);
            prop_assert_eq!(&once, &twice);
            prop_assert!(again.removed.is_empty(), "{:?}", again);
        }
    }
}
