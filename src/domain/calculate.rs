//! The built-in `calculate` tool: tau-bench evaluates the expression with Python's `eval`, so
//! this is a small Python-arithmetic evaluator (arbitrary-precision ints, true and floor
//! division, `**`, unary signs) producing `str(round(float(result), 2))` and Python's error texts.

use crate::pyjson;
use num_bigint::BigInt;
use num_traits::{Signed, ToPrimitive, Zero};

/// Characters tau-bench accepts in an expression.
pub const ALLOWED: &str = "0123456789+-*/(). ";

/// What tau-bench's `calculate` returns for `expression`.
pub fn calculate(expression: &str) -> String {
    if !expression.chars().all(|c| ALLOWED.contains(c)) {
        return "Error: invalid characters in expression".into();
    }
    match evaluate(expression).and_then(|n| n.to_float()) {
        Ok(x) => pyjson::float_repr(pyjson::round_float(x, 2)),
        Err(e) => format!("Error: {e}"),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Num {
    Int(BigInt),
    Float(f64),
}

impl Num {
    fn to_float(&self) -> Result<f64, String> {
        match self {
            Num::Float(f) => Ok(*f),
            Num::Int(i) => int_to_float(i),
        }
    }
}

fn int_to_float(i: &BigInt) -> Result<f64, String> {
    match i.to_f64() {
        Some(f) if f.is_finite() => Ok(f),
        _ => Err("int too large to convert to float".into()),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Num),
    Plus,
    Minus,
    Star,
    Slash,
    DoubleSlash,
    Pow,
    LParen,
    RParen,
}

const SYNTAX: &str = "invalid syntax (<string>, line 1)";

fn tokenize(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' => i += 1,
            b'0'..=b'9' | b'.' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let mut is_float = false;
                if i < b.len() && b[i] == b'.' {
                    is_float = true;
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                let text = &src[start..i];
                if text == "." {
                    return Err(SYNTAX.into());
                }
                if i < b.len() && (b[i] == b'.' || b[i].is_ascii_digit()) {
                    return Err(SYNTAX.into());
                }
                if is_float {
                    out.push(Tok::Num(Num::Float(
                        text.parse().map_err(|_| SYNTAX.to_string())?,
                    )));
                } else {
                    if text.len() > 1 && text.starts_with('0') && text.bytes().any(|d| d != b'0') {
                        return Err("leading zeros in decimal integer literals are not permitted; use an 0o prefix for octal integers (<string>, line 1)".into());
                    }
                    out.push(Tok::Num(Num::Int(
                        text.parse().map_err(|_| SYNTAX.to_string())?,
                    )));
                }
            }
            b'+' => {
                out.push(Tok::Plus);
                i += 1;
            }
            b'-' => {
                out.push(Tok::Minus);
                i += 1;
            }
            b'*' => {
                if b.get(i + 1) == Some(&b'*') {
                    out.push(Tok::Pow);
                    i += 2;
                } else {
                    out.push(Tok::Star);
                    i += 1;
                }
            }
            b'/' => {
                if b.get(i + 1) == Some(&b'/') {
                    out.push(Tok::DoubleSlash);
                    i += 2;
                } else {
                    out.push(Tok::Slash);
                    i += 1;
                }
            }
            b'(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            b')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            _ => return Err(SYNTAX.into()),
        }
    }
    Ok(out)
}

/// A parsed expression, evaluated after parsing succeeds (Python reports syntax errors first).
#[derive(Debug)]
enum Expr {
    Num(Num),
    Tuple,
    Neg(Box<Expr>),
    Pos(Box<Expr>),
    Bin(Tok, Box<Expr>, Box<Expr>),
    Call(Box<Expr>),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    // expr := term (('+'|'-') term)*
    fn expr(&mut self) -> Result<Expr, String> {
        let mut lhs = self.term()?;
        while let Some(op @ (Tok::Plus | Tok::Minus)) = self.peek().cloned() {
            self.pos += 1;
            let rhs = self.term()?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    // term := factor (('*'|'/'|'//') factor)*
    fn term(&mut self) -> Result<Expr, String> {
        let mut lhs = self.factor()?;
        while let Some(op @ (Tok::Star | Tok::Slash | Tok::DoubleSlash)) = self.peek().cloned() {
            self.pos += 1;
            let rhs = self.factor()?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    // factor := ('+'|'-') factor | power
    fn factor(&mut self) -> Result<Expr, String> {
        match self.peek() {
            Some(Tok::Minus) => {
                self.pos += 1;
                Ok(Expr::Neg(Box::new(self.factor()?)))
            }
            Some(Tok::Plus) => {
                self.pos += 1;
                Ok(Expr::Pos(Box::new(self.factor()?)))
            }
            _ => self.power(),
        }
    }

    // power := primary ['**' factor]
    fn power(&mut self) -> Result<Expr, String> {
        let base = self.primary()?;
        if self.peek() == Some(&Tok::Pow) {
            self.pos += 1;
            let exp = self.factor()?;
            return Ok(Expr::Bin(Tok::Pow, Box::new(base), Box::new(exp)));
        }
        Ok(base)
    }

    // primary := atom ('(' [expr] ')')*
    fn primary(&mut self) -> Result<Expr, String> {
        let mut e = self.atom()?;
        while self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            if self.peek() != Some(&Tok::RParen) {
                self.expr()?;
            }
            self.close()?;
            e = Expr::Call(Box::new(e));
        }
        Ok(e)
    }

    fn atom(&mut self) -> Result<Expr, String> {
        match self.next() {
            Some(Tok::Num(n)) => Ok(Expr::Num(n)),
            Some(Tok::LParen) => {
                if self.peek() == Some(&Tok::RParen) {
                    self.pos += 1;
                    return Ok(Expr::Tuple);
                }
                let e = self.expr()?;
                self.close()?;
                Ok(e)
            }
            Some(Tok::RParen) => Err("unmatched ')' (<string>, line 1)".into()),
            _ => Err(SYNTAX.into()),
        }
    }

    fn close(&mut self) -> Result<(), String> {
        match self.next() {
            Some(Tok::RParen) => Ok(()),
            None => Err("'(' was never closed (<string>, line 1)".into()),
            _ => Err(SYNTAX.into()),
        }
    }
}

fn evaluate(src: &str) -> Result<Num, String> {
    if src.trim().is_empty() {
        return Err("invalid syntax (<string>, line 0)".into());
    }
    let toks = tokenize(src)?;
    let mut p = Parser { toks, pos: 0 };
    let e = p.expr()?;
    match p.peek() {
        None => {}
        Some(Tok::RParen) => return Err("unmatched ')' (<string>, line 1)".into()),
        Some(_) => return Err(SYNTAX.into()),
    }
    eval(&e)
}

fn type_name(n: &Num) -> &'static str {
    match n {
        Num::Int(_) => "int",
        Num::Float(_) => "float",
    }
}

fn eval(e: &Expr) -> Result<Num, String> {
    Ok(match e {
        Expr::Num(n) => n.clone(),
        Expr::Tuple => {
            return Err("float() argument must be a string or a real number, not 'tuple'".into());
        }
        Expr::Call(f) => {
            let callee = eval(f)?;
            return Err(format!("'{}' object is not callable", type_name(&callee)));
        }
        Expr::Neg(x) => match eval(x)? {
            Num::Int(i) => Num::Int(-i),
            Num::Float(f) => Num::Float(-f),
        },
        Expr::Pos(x) => eval(x)?,
        Expr::Bin(op, a, b) => binary(op, eval(a)?, eval(b)?)?,
    })
}

fn binary(op: &Tok, a: Num, b: Num) -> Result<Num, String> {
    use Num::{Float, Int};
    match (op, a, b) {
        (Tok::Plus, Int(x), Int(y)) => Ok(Int(x + y)),
        (Tok::Minus, Int(x), Int(y)) => Ok(Int(x - y)),
        (Tok::Star, Int(x), Int(y)) => Ok(Int(x * y)),
        (Tok::Slash, Int(x), Int(y)) => {
            if y.is_zero() {
                return Err("division by zero".into());
            }
            Ok(Float(int_true_div(&x, &y)?))
        }
        (Tok::DoubleSlash, Int(x), Int(y)) => {
            if y.is_zero() {
                return Err("integer division or modulo by zero".into());
            }
            Ok(Int(floor_div(&x, &y)))
        }
        (Tok::Pow, Int(x), Int(y)) => {
            if y.is_negative() {
                let (fx, fy) = (int_to_float(&x)?, int_to_float(&y)?);
                if fx == 0.0 {
                    return Err("0.0 cannot be raised to a negative power".into());
                }
                return Ok(Float(fx.powf(fy)));
            }
            let exp = y
                .to_u32()
                .filter(|e| (*e as u64) * x.bits() < 1 << 24)
                .ok_or("exponent too large")?;
            Ok(Int(num_traits::pow(x, exp as usize)))
        }
        (op, a, b) => {
            let (x, y) = (a.to_float()?, b.to_float()?);
            match op {
                Tok::Plus => Ok(Float(x + y)),
                Tok::Minus => Ok(Float(x - y)),
                Tok::Star => Ok(Float(x * y)),
                Tok::Slash => {
                    if y == 0.0 {
                        return Err("float division by zero".into());
                    }
                    Ok(Float(x / y))
                }
                Tok::DoubleSlash => {
                    if y == 0.0 {
                        return Err("float floor division by zero".into());
                    }
                    Ok(Float(py_float_floordiv(x, y)))
                }
                Tok::Pow => {
                    if x == 0.0 && y < 0.0 {
                        return Err("0.0 cannot be raised to a negative power".into());
                    }
                    if x < 0.0 && y.fract() != 0.0 {
                        // Python returns a complex number here, which float() then rejects.
                        return Err(
                            "float() argument must be a string or a real number, not 'complex'"
                                .into(),
                        );
                    }
                    let r = x.powf(y);
                    if r.is_infinite() {
                        return Err("(34, 'Numerical result out of range')".into());
                    }
                    Ok(Float(r))
                }
                _ => Err(SYNTAX.into()),
            }
        }
    }
}

fn floor_div(x: &BigInt, y: &BigInt) -> BigInt {
    use num_integer::Integer;
    x.div_floor(y)
}

/// Python's int / int: correctly rounded when both fit in a double exactly.
fn int_true_div(x: &BigInt, y: &BigInt) -> Result<f64, String> {
    const EXACT: u64 = 1 << 53;
    if x.bits() <= 53 && y.bits() <= 53 {
        let _ = EXACT;
        return Ok(x.to_f64().unwrap_or(f64::NAN) / y.to_f64().unwrap_or(f64::NAN));
    }
    let r = x.to_f64().unwrap_or(f64::INFINITY) / y.to_f64().unwrap_or(f64::INFINITY);
    if r.is_finite() {
        Ok(r)
    } else {
        Err("integer division result too large for a float".into())
    }
}

/// Python's float floor division (`float_floor_div` in CPython's floatobject.c).
fn py_float_floordiv(vx: f64, wx: f64) -> f64 {
    let mut m = vx % wx;
    let mut div = (vx - m) / wx;
    if m != 0.0 {
        if (wx < 0.0) != (m < 0.0) {
            m += wx;
            div -= 1.0;
        }
    } else {
        m = 0.0_f64.copysign(wx);
    }
    let _ = m;
    if div != 0.0 {
        let mut floordiv = div.floor();
        if div - floordiv > 0.5 {
            floordiv += 1.0;
        }
        floordiv
    } else {
        0.0_f64.copysign(vx / wx)
    }
}

#[cfg(test)]
mod tests {
    use super::calculate;

    #[test]
    fn matches_python_eval() {
        // Expected values are what tau-bench's calculate returns under CPython 3.11.
        let cases = [
            ("1/0", "Error: division by zero"),
            ("1.0/0", "Error: float division by zero"),
            ("1//0", "Error: integer division or modulo by zero"),
            ("1.0//0", "Error: float floor division by zero"),
            ("0**-1", "Error: 0.0 cannot be raised to a negative power"),
            ("1+", "Error: invalid syntax (<string>, line 1)"),
            ("(1", "Error: '(' was never closed (<string>, line 1)"),
            ("1)", "Error: unmatched ')' (<string>, line 1)"),
            ("", "Error: invalid syntax (<string>, line 0)"),
            ("1 2", "Error: invalid syntax (<string>, line 1)"),
            ("1.2.3", "Error: invalid syntax (<string>, line 1)"),
            (
                "()",
                "Error: float() argument must be a string or a real number, not 'tuple'",
            ),
            ("(1)(2)", "Error: 'int' object is not callable"),
            (
                "01",
                "Error: leading zeros in decimal integer literals are not permitted; use an 0o prefix for octal integers (<string>, line 1)",
            ),
            ("2**-1", "0.5"),
            ("-2**2", "-4.0"),
            ("7//-2", "-4.0"),
            ("7.5//2", "3.0"),
            ("2**0.5", "1.41"),
            ("1e5", "Error: invalid characters in expression"),
            ("1.", "1.0"),
            ("(.5)", "0.5"),
            ("2**1000", "1.0715086071862673e+301"),
            ("10**400", "Error: int too large to convert to float"),
            ("+-1", "-1.0"),
            ("1--1", "2.0"),
            ("2 ** 3 ** 2", "512.0"),
            ("100/3", "33.33"),
            ("0.1+0.2", "0.3"),
            (
                "12345678901234567890*98765432109876543210",
                "1.219326311370218e+39",
            ),
            ("1234.5 * 3 - 17.25", "3686.25"),
        ];
        for (expr, want) in cases {
            assert_eq!(calculate(expr), want, "calculate({expr:?})");
        }
    }
}
