//! Python builtins that Starlark lacks, with Python's exact semantics, so tau-bench's tools port
//! line by line: `round`, `sum`, `deepcopy`, `count`, `str` (Python's float repr) and a `json`
//! namespace whose `dumps` is byte-identical to Python's.

use super::convert;
use crate::pyjson;
use starlark::environment::GlobalsBuilder;
use starlark::starlark_module;
use starlark::values::float::StarlarkFloat;
use starlark::values::none::NoneOr;
use starlark::values::{Heap, UnpackValue, Value, ValueLike};

fn err(msg: impl std::fmt::Display) -> starlark::Error {
    starlark::Error::new_other(anyhow::anyhow!("{msg}"))
}

/// Python's `str(x)`: floats print as `repr(float)`, everything else as Starlark prints it.
pub fn py_str(value: Value) -> String {
    if let Some(f) = value.downcast_ref::<StarlarkFloat>() {
        return pyjson::float_repr(f.0);
    }
    value.to_str()
}

#[starlark_module]
pub fn python_builtins(builder: &mut GlobalsBuilder) {
    /// Python's `round(number, ndigits=None)`: half to even, exact decimal rounding of floats.
    fn round<'v>(
        #[starlark(require = pos)] number: Value<'v>,
        #[starlark(require = pos, default = NoneOr::None)] ndigits: NoneOr<i32>,
        heap: Heap<'v>,
    ) -> starlark::Result<Value<'v>> {
        if let Some(f) = number.downcast_ref::<StarlarkFloat>() {
            return match ndigits.into_option() {
                Some(n) => Ok(heap.alloc(StarlarkFloat(pyjson::round_float(f.0, n)))),
                None => {
                    if !f.0.is_finite() {
                        return Err(err("cannot convert float infinity or NaN to integer"));
                    }
                    let r = f.0.round_ties_even();
                    if r.abs() < 9.0e18 {
                        Ok(heap.alloc(r as i64))
                    } else {
                        Err(err("round(): result does not fit in 64 bits"))
                    }
                }
            };
        }
        if number.get_type() == "int" {
            let n = ndigits.into_option().unwrap_or(0);
            if n >= 0 {
                return Ok(number);
            }
            let i = i64::unpack_value(number)?.ok_or_else(|| err("round(): integer too large"))?;
            let pow = 10i64.checked_pow((-n) as u32).unwrap_or(i64::MAX);
            let (q, r) = (i.div_euclid(pow), i.rem_euclid(pow));
            let q = if 2 * r > pow || (2 * r == pow && q % 2 != 0) {
                q + 1
            } else {
                q
            };
            return Ok(heap.alloc(q.saturating_mul(pow)));
        }
        Err(err(format!(
            "type {} doesn't define __round__ method",
            number.get_type()
        )))
    }

    /// Python's `sum(iterable, start=0)`: left-to-right `+`.
    fn sum<'v>(
        #[starlark(require = pos)] iterable: Value<'v>,
        #[starlark(require = pos, default = 0)] start: Value<'v>,
        heap: Heap<'v>,
    ) -> starlark::Result<Value<'v>> {
        let mut total = start;
        for item in iterable.iterate(heap)? {
            total = total.add(item, heap)?;
        }
        Ok(total)
    }

    /// A deep copy of a JSON-like value (dicts, lists, tuples, strings, numbers, bools, None).
    fn deepcopy<'v>(
        #[starlark(require = pos)] value: Value<'v>,
        heap: Heap<'v>,
    ) -> starlark::Result<Value<'v>> {
        let json = convert::to_json(value).map_err(err)?;
        Ok(convert::to_starlark(heap, &json))
    }

    /// Python's `seq.count(x)`: how many items of `seq` equal `x`.
    fn count<'v>(
        #[starlark(require = pos)] seq: Value<'v>,
        #[starlark(require = pos)] x: Value<'v>,
        heap: Heap<'v>,
    ) -> starlark::Result<i32> {
        let mut n = 0;
        for item in seq.iterate(heap)? {
            if item.equals(x)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Python's `str(x)` (floats as Python prints them: `1e-05`, `10000000000.0`).
    fn str<'v>(#[starlark(require = pos, default = "")] x: Value<'v>) -> starlark::Result<String> {
        Ok(py_str(x))
    }
}

#[starlark_module]
pub fn json_namespace(builder: &mut GlobalsBuilder) {
    /// Python's `json.dumps(obj)` with default settings, or sorted keys with `sort_keys=True`.
    fn dumps<'v>(
        #[starlark(require = pos)] obj: Value<'v>,
        #[starlark(require = named, default = false)] sort_keys: bool,
    ) -> starlark::Result<String> {
        let json = convert::to_json(obj).map_err(err)?;
        let style = pyjson::Style {
            sort_keys,
            ..pyjson::Style::PYTHON
        };
        Ok(pyjson::to_string(&json, style))
    }

    /// Parse JSON text into dicts, lists, strings, numbers, bools and None.
    fn loads<'v>(
        #[starlark(require = pos)] s: &str,
        heap: Heap<'v>,
    ) -> starlark::Result<Value<'v>> {
        let json: serde_json::Value = serde_json::from_str(s).map_err(err)?;
        Ok(convert::to_starlark(heap, &json))
    }
}
