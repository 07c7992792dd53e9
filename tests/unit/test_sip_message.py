"""SIP message bytes, digest answers and what each MESSAGE answer means."""

from __future__ import annotations

import pytest

from smsbridge.sip import digest
from smsbridge.sip.answers import Answer, classify
from smsbridge.sip.message import SipMessage, SipParseError, StreamFramer, param, parse, uri_user

RESPONSE = (b"SIP/2.0 407 Proxy Authentication Required\r\nv: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKx;rport=5\r\n"
            b"Proxy-Authenticate: Digest realm=\"sms.test\", nonce=\"abc\"\r\nl: 0\r\n\r\n")


def test_a_response_is_parsed_with_compact_headers_expanded() -> None:
    message = parse(RESPONSE)
    assert (message.status, message.reason) == (407, "Proxy Authentication Required")
    assert param(message.header("via") or "", "branch") == "z9hG4bKx"


def test_the_body_is_cut_at_content_length_and_encoded_in_utf8_bytes() -> None:
    request = SipMessage("MESSAGE sip:1001@x SIP/2.0", [("Call-ID", "c")], "Привет 👋".encode())
    data = request.encode()
    assert b"Content-Length: 17\r\n" in data
    assert parse(data + b"garbage").body == "Привет 👋".encode()


def test_a_tcp_stream_is_cut_into_messages_even_in_small_pieces() -> None:
    one = SipMessage("MESSAGE sip:a@b SIP/2.0", [("Call-ID", "1")], b"first").encode()
    two = SipMessage("MESSAGE sip:a@b SIP/2.0", [("Call-ID", "2")], "second ✓".encode()).encode()
    framer, found = StreamFramer(), []
    stream = one + b"\r\n\r\n" + two  # keep-alive CRLFs between messages
    for i in range(0, len(stream), 7):
        found += framer.feed(stream[i:i + 7])
    assert [m.body for m in found] == [b"first", "second ✓".encode()]


def test_garbage_is_a_parse_error() -> None:
    with pytest.raises(SipParseError):
        parse(b"HTTP/1.1 200 OK\r\n\r\n")


def test_the_user_of_a_uri_inside_a_name_addr() -> None:
    assert uri_user('"Desk" <sip:1001@pbx.example;transport=tcp>;tag=9') == "1001"
    assert uri_user("sip:+12065550100@sms.test") == "+12065550100"
    assert uri_user("tel:+12065550100") == ""


def test_digest_matches_the_rfc_2617_example() -> None:
    challenge = digest.parse_challenge('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                                       'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
                                       'opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    header = digest.authorization(challenge, method="GET", uri="/dir/index.html", username="Mufasa",
                                  password="Circle Of Life", cnonce="0a4f113b")
    assert 'response="6629fae49393a05397450978507c4ef1"' in header
    assert digest.verify(header, method="GET", uri="/dir/index.html", password="Circle Of Life",
                         realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093")
    assert not digest.verify(header, method="GET", uri="/dir/index.html", password="wrong",
                             realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093")
    # the same credentials on a request for another URI: a replay, refused (RFC 3261 §22.4)
    assert not digest.verify(header, method="GET", uri="/dir/other.html", password="Circle Of Life",
                             realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093")


def test_a_challenge_we_cannot_answer_is_refused() -> None:
    with pytest.raises(digest.UnsupportedChallenge):
        digest.parse_challenge('Basic realm="x"')
    with pytest.raises(digest.UnsupportedChallenge):
        digest.parse_challenge('Digest realm="x", nonce="n", algorithm=MD5-sess-unknown')


@pytest.mark.parametrize(("status", "answer"), [
    (200, Answer.DELIVERED), (202, Answer.ACCEPTED), (401, Answer.CHALLENGE), (407, Answer.CHALLENGE),
    (404, Answer.RETRY), (408, Answer.RETRY), (480, Answer.RETRY), (500, Answer.RETRY), (503, Answer.RETRY),
    (413, Answer.RESPLIT), (513, Answer.RESPLIT),
    (403, Answer.PERMANENT), (405, Answer.PERMANENT), (415, Answer.PERMANENT), (488, Answer.PERMANENT),
    (603, Answer.PERMANENT), (302, Answer.PERMANENT),
])
def test_what_each_answer_means(status: int, answer: Answer) -> None:
    assert classify(status) is answer


def test_a_reused_nonce_carries_its_count_in_hex_and_the_count_is_in_the_response() -> None:
    challenge = digest.parse_challenge('Digest realm="r", nonce="n1", qop="auth"')
    second = digest.authorization(challenge, method="MESSAGE", uri="sip:1001@r", username="u", password="p",
                                  cnonce="c", nc=2)
    assert "nc=00000002" in second
    assert second != digest.authorization(challenge, method="MESSAGE", uri="sip:1001@r", username="u",
                                          password="p", cnonce="c", nc=1).replace("nc=00000001", "nc=00000002")
    assert digest.verify(second, method="MESSAGE", uri="sip:1001@r", password="p", realm="r", nonce="n1")
    with pytest.raises(ValueError, match="nonce count"):
        digest.authorization(challenge, method="MESSAGE", uri="sip:1001@r", username="u", password="p", nc=0)
