//! Just enough DER to read an X.509 certificate's `notAfter`, for the https
//! probe's days-to-expiry. A malformed certificate gives `None`, never a panic.

/// Reads one DER TLV at the start of `b`: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        l0 as usize
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | x as usize;
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0i64, |a, &c| a * 10 + (c - b'0') as i64))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) to unix seconds.
fn time_to_unix(tag: u8, v: &[u8]) -> Option<i64> {
    let (year, rest) = match tag {
        0x17 if v.len() == 13 => {
            let yy = digits(&v[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &v[2..])
        }
        0x18 if v.len() == 15 => (digits(&v[..4])?, &v[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let f = |i: usize| digits(&rest[i..i + 2]);
    let (mo, d, h, mi, s) = (f(0)?, f(2)?, f(4)?, f(6)?, f(8)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// The certificate's `notAfter` in unix seconds.
pub fn not_after_unix(der: &[u8]) -> Option<i64> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    let (_serial, _, rest) = tlv(rest)?;
    let (_sig_alg, _, rest) = tlv(rest)?;
    let (_issuer, _, rest) = tlv(rest)?;
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (_, _, after) = tlv(validity)?; // notBefore
    let (tag, not_after, _) = tlv(after)?;
    time_to_unix(tag, not_after)
}

/// Whole days from `now_unix_s` until the certificate expires (negative once expired).
pub fn days_left(der: &[u8], now_unix_s: i64) -> Option<i32> {
    let secs = not_after_unix(der)? - now_unix_s;
    Some(
        secs.div_euclid(86_400)
            .clamp(i32::MIN as i64, i32::MAX as i64) as i32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2038, 1, 19), 24_855);
    }

    #[test]
    fn times() {
        assert_eq!(time_to_unix(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time_to_unix(0x18, b"20380119031407Z"), Some(2_147_483_647));
        assert_eq!(time_to_unix(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(time_to_unix(0x17, b"701301000000Z"), None);
        assert_eq!(time_to_unix(0x17, b"7001010000Z"), None);
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(not_after_unix(&[]), None);
        assert_eq!(not_after_unix(&[0x30, 0x82, 0xff]), None);
        assert_eq!(not_after_unix(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
    }

    #[test]
    fn rcgen_certificate() {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let want = days_from_civil(2031, 5, 17) * 86_400;
        assert_eq!(not_after_unix(cert.der()), Some(want));
        assert_eq!(days_left(cert.der(), want - 10 * 86_400 - 1), Some(10));
        assert_eq!(days_left(cert.der(), want + 1), Some(-1));
    }
}
