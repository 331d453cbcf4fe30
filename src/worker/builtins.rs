//! The built-in functions of `poold worker` (see DESIGN.md). Each takes positional arguments
//! (one item, or the item's array when `star` is set) plus fixed keyword arguments, like a
//! Python call `f(*args, **kwargs)`. Wrong argument types are item errors (`TypeError`),
//! never a crash; only `crash` ends the process, on purpose.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::protocol::{FunctionInfo, ItemError};

type Args = Vec<Value>;
type Kwargs = Map<String, Value>;
type Outcome = Result<Value, ItemError>;

/// A parameter: its name and, when optional, its default.
type Param = (&'static str, Option<fn() -> Value>);

/// Name, parameters (in positional order), doc string, body.
struct Builtin {
    name: &'static str,
    params: &'static [Param],
    doc: &'static str,
    body: fn(&[Value]) -> Outcome,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "square",
        params: &[("x", None)],
        doc: "square(x): x * x.",
        body: square,
    },
    Builtin {
        name: "cube",
        params: &[("x", None)],
        doc: "cube(x): x * x * x.",
        body: cube,
    },
    Builtin {
        name: "pow",
        params: &[("x", None), ("exp", Some(|| json!(2)))],
        doc: "pow(x, exp=2): x raised to exp.",
        body: pow,
    },
    Builtin {
        name: "add",
        params: &[("a", None), ("b", None)],
        doc: "add(a, b): a + b. Use with star=true and items like [1, 2].",
        body: add,
    },
    Builtin {
        name: "echo",
        params: &[("x", None)],
        doc: "echo(x): returns x unchanged.",
        body: echo,
    },
    Builtin {
        name: "sleep",
        params: &[("seconds", None)],
        doc: "sleep(seconds): sleeps, then returns seconds.",
        body: sleep,
    },
    Builtin {
        name: "fail",
        params: &[("message", None)],
        doc: "fail(message): raises an item error (ValueError) with that message.",
        body: fail,
    },
    Builtin {
        name: "crash",
        params: &[("code", Some(|| json!(1)))],
        doc: "crash(code=1): the worker process exits at once with that code; crash(0) returns null.",
        body: crash,
    },
    Builtin {
        name: "sha256",
        params: &[("text", None), ("rounds", Some(|| json!(1)))],
        doc: "sha256(text, rounds=1): hex digest of text, hashed rounds times.",
        body: sha256,
    },
    Builtin {
        name: "count_primes",
        params: &[("n", None)],
        doc: "count_primes(n): the number of primes below n (CPU-bound).",
        body: count_primes,
    },
];

pub fn functions() -> Vec<FunctionInfo> {
    BUILTINS
        .iter()
        .map(|b| FunctionInfo {
            name: b.name.to_string(),
            doc: b.doc.to_string(),
            aliases: Vec::new(),
        })
        .collect()
}

/// Call `name(*args, **kwargs)`, binding arguments like Python does.
pub fn call(name: &str, args: Args, kwargs: &Kwargs) -> Outcome {
    let builtin = BUILTINS
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| ItemError::new("NameError", format!("unknown function {name:?}")))?;
    let bound = bind(builtin, args, kwargs)?;
    (builtin.body)(&bound)
}

fn bind(builtin: &Builtin, args: Args, kwargs: &Kwargs) -> Result<Vec<Value>, ItemError> {
    let name = builtin.name;
    if args.len() > builtin.params.len() {
        return Err(type_error(format!(
            "{name}() takes {} positional arguments but {} were given",
            builtin.params.len(),
            args.len()
        )));
    }
    if let Some(unknown) = kwargs
        .keys()
        .find(|k| !builtin.params.iter().any(|(p, _)| p == k))
    {
        return Err(type_error(format!(
            "{name}() got an unexpected keyword argument {unknown:?}"
        )));
    }
    let mut args = args.into_iter();
    builtin
        .params
        .iter()
        .map(|(param, default)| match (args.next(), kwargs.get(*param)) {
            (Some(_), Some(_)) => Err(type_error(format!(
                "{name}() got multiple values for argument {param:?}"
            ))),
            (Some(value), None) => Ok(value),
            (None, Some(value)) => Ok(value.clone()),
            (None, None) => default
                .map(|d| d())
                .ok_or_else(|| type_error(format!("{name}() missing required argument {param:?}"))),
        })
        .collect()
}

fn type_error(message: String) -> ItemError {
    ItemError::new("TypeError", message)
}

/// A JSON number as an exact integer when it is one, else a float.
enum Num {
    Int(i64),
    Float(f64),
}

fn num(value: &Value, what: &str) -> Result<Num, ItemError> {
    if let Some(i) = value.as_i64() {
        Ok(Num::Int(i))
    } else if let Some(f) = value.as_f64() {
        Ok(Num::Float(f))
    } else {
        Err(type_error(format!("{what} must be a number, got {value}")))
    }
}

fn float(f: f64) -> Outcome {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| ItemError::new("OverflowError", "result is not a finite number"))
}

fn overflow() -> ItemError {
    ItemError::new("OverflowError", "integer result does not fit in 64 bits")
}

fn pow_num(x: &Value, exp: &Value) -> Outcome {
    match (num(x, "x")?, num(exp, "exp")?) {
        (Num::Int(x), Num::Int(e)) if e >= 0 => {
            let e = u32::try_from(e).map_err(|_| overflow())?;
            x.checked_pow(e).map(Value::from).ok_or_else(overflow)
        }
        (x, e) => float(as_f64(x).powf(as_f64(e))),
    }
}

fn as_f64(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

fn square(a: &[Value]) -> Outcome {
    pow_num(&a[0], &json!(2))
}

fn cube(a: &[Value]) -> Outcome {
    pow_num(&a[0], &json!(3))
}

fn pow(a: &[Value]) -> Outcome {
    pow_num(&a[0], &a[1])
}

fn add(a: &[Value]) -> Outcome {
    match (&a[0], &a[1]) {
        (Value::String(x), Value::String(y)) => Ok(Value::String(format!("{x}{y}"))),
        (Value::Array(x), Value::Array(y)) => Ok(Value::Array([x.clone(), y.clone()].concat())),
        (x, y) => match (num(x, "a")?, num(y, "b")?) {
            (Num::Int(x), Num::Int(y)) => x.checked_add(y).map(Value::from).ok_or_else(overflow),
            (x, y) => float(as_f64(x) + as_f64(y)),
        },
    }
}

fn echo(a: &[Value]) -> Outcome {
    Ok(a[0].clone())
}

fn sleep(a: &[Value]) -> Outcome {
    let seconds = a[0]
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| {
            type_error(format!(
                "seconds must be a non-negative number, got {}",
                a[0]
            ))
        })?;
    std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    Ok(a[0].clone())
}

fn fail(a: &[Value]) -> Outcome {
    let message = match &a[0] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Err(ItemError::new("ValueError", message))
}

fn crash(a: &[Value]) -> Outcome {
    let code = a[0]
        .as_i64()
        .and_then(|c| i32::try_from(c).ok())
        .ok_or_else(|| type_error(format!("code must be an integer, got {}", a[0])))?;
    if code == 0 {
        return Ok(Value::Null);
    }
    // Exit without unwinding or flushing: this simulates a worker dying mid-task.
    std::process::exit(code)
}

fn sha256(a: &[Value]) -> Outcome {
    let text = a[0]
        .as_str()
        .ok_or_else(|| type_error(format!("text must be a string, got {}", a[0])))?;
    let rounds = a[1]
        .as_u64()
        .filter(|r| *r >= 1)
        .ok_or_else(|| type_error(format!("rounds must be a positive integer, got {}", a[1])))?;
    let mut digest = hex(&Sha256::digest(text.as_bytes()));
    for _ in 1..rounds {
        digest = hex(&Sha256::digest(digest.as_bytes()));
    }
    Ok(Value::String(digest))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn count_primes(a: &[Value]) -> Outcome {
    let n = a[0]
        .as_u64()
        .ok_or_else(|| type_error(format!("n must be a non-negative integer, got {}", a[0])))?;
    if n > 100_000_000 {
        return Err(ItemError::new("ValueError", "n must be at most 100000000"));
    }
    let n = n as usize;
    if n < 3 {
        return Ok(json!(0));
    }
    let mut composite = vec![false; n];
    let mut count = 0u64;
    for i in 2..n {
        if !composite[i] {
            count += 1;
            let mut j = i * i;
            while j < n {
                composite[j] = true;
                j += i;
            }
        }
    }
    Ok(json!(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_json(name: &str, args: Value, kwargs: Value) -> Outcome {
        let Value::Array(args) = args else {
            panic!("args must be an array")
        };
        let Value::Object(kwargs) = kwargs else {
            panic!("kwargs must be an object")
        };
        call(name, args, &kwargs)
    }

    #[test]
    fn arithmetic_matches_python() {
        assert_eq!(
            call_json("square", json!([7]), json!({})).unwrap(),
            json!(49)
        );
        assert_eq!(
            call_json("square", json!([1.5]), json!({})).unwrap(),
            json!(2.25)
        );
        assert_eq!(
            call_json("cube", json!([-3]), json!({})).unwrap(),
            json!(-27)
        );
        assert_eq!(
            call_json("pow", json!([2]), json!({"exp": 10})).unwrap(),
            json!(1024)
        );
        assert_eq!(
            call_json("pow", json!([2, -1]), json!({})).unwrap(),
            json!(0.5)
        );
        assert_eq!(
            call_json("add", json!([2, 3]), json!({})).unwrap(),
            json!(5)
        );
        assert_eq!(
            call_json("add", json!(["a", "b"]), json!({})).unwrap(),
            json!("ab")
        );
    }

    #[test]
    fn bad_arguments_are_type_errors() {
        let e = call_json("square", json!(["x"]), json!({})).unwrap_err();
        assert_eq!(e.kind, "TypeError");
        let e = call_json("pow", json!([2]), json!({"bogus": 1})).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
        let e = call_json("add", json!([1]), json!({})).unwrap_err();
        assert!(e.message.contains("missing"), "{}", e.message);
        let e = call_json("square", json!([i64::MAX]), json!({})).unwrap_err();
        assert_eq!(e.kind, "OverflowError");
    }

    #[test]
    fn other_builtins() {
        let e = call_json("fail", json!(["boom"]), json!({})).unwrap_err();
        assert_eq!(
            (e.kind.as_str(), e.message.as_str()),
            ("ValueError", "boom")
        );
        assert_eq!(
            call_json("crash", json!([0]), json!({})).unwrap(),
            Value::Null
        );
        assert_eq!(
            call_json("count_primes", json!([100]), json!({})).unwrap(),
            json!(25)
        );
        assert_eq!(
            call_json("sha256", json!(["abc"]), json!({})).unwrap(),
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            call_json("echo", json!([{"a": [1]}]), json!({})).unwrap(),
            json!({"a": [1]})
        );
    }
}
