//! The privacy rule of DCC error messages (src/hcert/validate.rs: "messages never repeat personal
//! data"), checked by difference rather than by searching messages for names: searching would
//! teach the fuzzer the messages' own words through its comparison hooks, and it would soon
//! offer them as names. Instead, a DCC and the same DCC with other names must be refused with
//! the same messages.

use serde_json::Value;

/// `dcc` with the holder's names (`nam.*`) and date of birth (`dob`) changed: every ASCII letter
/// shifted to the next one of its case (`Z` → `A`). Lengths, character classes, emptiness and
/// NFC form stay the same (a letter followed by a non-ASCII character, which could be a
/// combining mark composing with it, is left alone), so every rule that holds for one holds for
/// the other; a message that differs between the two quotes a name.
pub fn with_other_names(dcc: &Value) -> Value {
    let mut v = dcc.clone();
    if let Some(obj) = v.as_object_mut() {
        if let Some(Value::Object(nam)) = obj.get_mut("nam") {
            for (_, x) in nam.iter_mut() {
                if let Value::String(s) = x {
                    *s = shift(s);
                }
            }
        }
        if let Some(Value::String(s)) = obj.get_mut("dob") {
            *s = shift(s);
        }
    }
    v
}

fn shift(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if !chars.get(i + 1).is_none_or(char::is_ascii) {
                return c;
            }
            match c {
                'a'..='y' | 'A'..='Y' => char::from(c as u8 + 1),
                'z' => 'a',
                'Z' => 'A',
                _ => c,
            }
        })
        .collect()
}
