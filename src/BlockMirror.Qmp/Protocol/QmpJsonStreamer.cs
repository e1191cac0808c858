using System.Text.Json;

namespace BlockMirror.Qmp.Protocol;

/// <summary>
/// Cuts a monitor's byte stream into JSON values and parses them, with the behaviour of QEMU 7.2's JSON
/// lexer and streamer (qobject/json-lexer.c, json-streamer.c), so that any input, however broken, gets the
/// replies qemu-storage-daemon gives: one value or one error per message; a bad byte ends the message
/// with "stray '...'" and the input is skipped to the next structural character, line end or 0xFF; a
/// closing bracket with nothing open is a message of its own. Single-quoted strings are accepted, as QEMU
/// accepts them. QEMU's limits hold per message: <see cref="MaxMessageBytes"/> of tokens,
/// <see cref="MaxTokens"/> tokens, <see cref="MaxNesting"/> levels. A token that can no longer fit is
/// followed to its end without being kept, so a client's input costs at most <see cref="MaxMessageBytes"/>
/// of memory.
/// </summary>
public sealed class QmpJsonStreamer
{
    /// <summary>Most bytes of tokens in one message (QEMU's MAX_TOKEN_SIZE, 64 MiB).</summary>
    public const int MaxMessageBytes = 64 << 20;

    /// <summary>Most tokens in one message (QEMU's MAX_TOKEN_COUNT).</summary>
    public const int MaxTokens = 2 << 20;

    /// <summary>Deepest nesting of one message (QEMU's MAX_NESTING).</summary>
    public const int MaxNesting = 1024;

    /// <summary>
    /// What the token store shrinks back to after a message that needed no more: a run of large messages
    /// reuses one large store instead of growing a new one each time.
    /// </summary>
    const int KeptCapacity = 64 << 10;

    /// <summary>The same for the token list.</summary>
    const int KeptTokens = 4096;

    enum State : byte
    {
        Start, Recovery, String, StringEscape, Zero, Sign, Digits, Point, Fraction, Exponent, ExponentSign, ExponentDigits, Keyword,
    }

    /// <summary>A complete message: the parsed value (the caller disposes it), or why there is none.</summary>
    public readonly record struct Message(JsonDocument? Document, string? Error);

    readonly Queue<Message> _ready = new();
    readonly List<QmpJsonToken> _tokens = [];
    byte[] _text = new byte[4096];
    int _textLength;

    State _state = State.Start;
    byte _quote;
    int _tokenStart;
    long _tokenLength;
    bool _discarding;

    int _braces, _brackets;
    long _messageBytes;

    /// <summary>The most of the token store the current message has used.</summary>
    int _highWater;

    /// <summary>
    /// Feeds bytes until at least one message is complete; returns how many were used. Take the messages
    /// with <see cref="TryTake"/>, then feed the rest.
    /// </summary>
    public int Feed(ReadOnlySpan<byte> bytes)
    {
        var used = 0;
        while (used < bytes.Length && _ready.Count == 0)
        {
            FeedByte(bytes[used++]);
        }

        return used;
    }

    public bool TryTake(out Message message) => _ready.TryDequeue(out message);

    /// <summary>
    /// Parses a whole text that must hold one JSON value, as QEMU parses a command-line option given in
    /// JSON (qobject_from_json): the value, or QEMU's error ("JSON parse error, ...", "premature EOI" for a
    /// value cut short, "Expecting at most one JSON value" for more than one).
    /// </summary>
    public static Message ParseSingle(string text)
    {
        var streamer = new QmpJsonStreamer();
        // A line end completes a number or keyword at the very end, as QEMU's lexer flush does.
        ReadOnlySpan<byte> rest = System.Text.Encoding.UTF8.GetBytes(text + "\n");
        JsonDocument? value = null;
        while (!rest.IsEmpty)
        {
            rest = rest[streamer.Feed(rest)..];
            while (streamer.TryTake(out var message))
            {
                if (message.Error is not null || value is not null)
                {
                    value?.Dispose();
                    message.Document?.Dispose();
                    // After a value anything more is refused as more; otherwise the first error wins.
                    return new Message(null, value is not null ? "Expecting at most one JSON value" : message.Error);
                }

                value = message.Document;
            }
        }

        return value is null ? new Message(null, "JSON parse error, premature EOI") : new Message(value, null);
    }

    void FeedByte(byte b)
    {
        // A token completed by the byte after it (a number, a keyword) leaves that byte to be read again.
        while (!Step(b))
        {
        }

        // One token over the limit: QEMU's lexer gives up on it there and starts afresh with the next byte.
        if (_tokenLength > MaxMessageBytes)
        {
            Fail("JSON token size limit exceeded");
            _state = State.Start;
            StartToken();
        }
    }

    /// <summary>Runs the byte through the lexer; false when the byte ended a token without being part of it.</summary>
    bool Step(byte b)
    {
        switch (_state)
        {
            case State.Start:
                StartToken();
                switch (b)
                {
                    case (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n':
                        return true;
                    case (byte)'"' or (byte)'\'':
                        _quote = b;
                        return Keep(b, State.String);
                    case (byte)'0':
                        return Keep(b, State.Zero);
                    case >= (byte)'1' and <= (byte)'9':
                        return Keep(b, State.Digits);
                    case (byte)'-':
                        return Keep(b, State.Sign);
                    case >= (byte)'a' and <= (byte)'z':
                        return Keep(b, State.Keyword);
                    case (byte)'{' or (byte)'}' or (byte)'[' or (byte)']' or (byte)':' or (byte)',':
                        return Emit(b, Structural(b));
                    default:
                        return Stray(b);
                }

            case State.Recovery:
                // Skip to something a client can resynchronise on: a structural character, a control
                // character other than tab, or one of the impossible bytes 0xFE and 0xFF.
                if (b is < 0x20 and not (byte)'\t' or >= 0xFE or (byte)'{' or (byte)'}' or (byte)'[' or (byte)']' or (byte)':' or (byte)',')
                {
                    _state = State.Start;
                    return false;
                }

                return true;

            case State.String:
                if (b is < 0x20 or >= 0xFE)
                {
                    return Stray(b);
                }

                return b == _quote ? Emit(b, QmpJsonTokenType.String) : Keep(b, b == (byte)'\\' ? State.StringEscape : State.String);

            case State.StringEscape:
                // Any character may follow a backslash here; the parser refuses the ones JSON does not know.
                return b is < 0x20 or >= 0xFE ? Stray(b) : Keep(b, State.String);

            case State.Zero:
                return b switch
                {
                    >= (byte)'0' and <= (byte)'9' => Stray(b),
                    (byte)'.' => Keep(b, State.Point),
                    _ => EmitBefore(QmpJsonTokenType.Integer),
                };

            case State.Sign:
                return b switch
                {
                    (byte)'0' => Keep(b, State.Zero),
                    >= (byte)'1' and <= (byte)'9' => Keep(b, State.Digits),
                    _ => Stray(b),
                };

            case State.Digits:
                return b switch
                {
                    >= (byte)'0' and <= (byte)'9' => Keep(b, State.Digits),
                    (byte)'.' => Keep(b, State.Point),
                    (byte)'e' or (byte)'E' => Keep(b, State.Exponent),
                    _ => EmitBefore(QmpJsonTokenType.Integer),
                };

            case State.Point:
                return b is >= (byte)'0' and <= (byte)'9' ? Keep(b, State.Fraction) : Stray(b);

            case State.Fraction:
                return b switch
                {
                    >= (byte)'0' and <= (byte)'9' => Keep(b, State.Fraction),
                    (byte)'e' or (byte)'E' => Keep(b, State.Exponent),
                    _ => EmitBefore(QmpJsonTokenType.Float),
                };

            case State.Exponent:
                return b switch
                {
                    (byte)'+' or (byte)'-' => Keep(b, State.ExponentSign),
                    >= (byte)'0' and <= (byte)'9' => Keep(b, State.ExponentDigits),
                    _ => Stray(b),
                };

            case State.ExponentSign:
                return b is >= (byte)'0' and <= (byte)'9' ? Keep(b, State.ExponentDigits) : Stray(b);

            case State.ExponentDigits:
                return b is >= (byte)'0' and <= (byte)'9' ? Keep(b, State.ExponentDigits) : EmitBefore(QmpJsonTokenType.Float);

            default:
                return b is >= (byte)'a' and <= (byte)'z' ? Keep(b, State.Keyword) : EmitBefore(QmpJsonTokenType.Keyword);
        }
    }

    static QmpJsonTokenType Structural(byte b) => b switch
    {
        (byte)'{' => QmpJsonTokenType.LeftBrace,
        (byte)'}' => QmpJsonTokenType.RightBrace,
        (byte)'[' => QmpJsonTokenType.LeftBracket,
        (byte)']' => QmpJsonTokenType.RightBracket,
        (byte)':' => QmpJsonTokenType.Colon,
        _ => QmpJsonTokenType.Comma,
    };

    void StartToken()
    {
        _highWater = Math.Max(_highWater, _textLength);
        _textLength = _tokenStart;
        _tokenLength = 0;
        _discarding = false;
    }

    /// <summary>Adds the byte to the current token and moves to <paramref name="next"/>.</summary>
    bool Keep(byte b, State next)
    {
        _tokenLength++;
        // A token that would take the message past its limit is still followed to its end (it is refused
        // then, as QEMU refuses it), but its bytes are not kept.
        if (!_discarding && _messageBytes + _tokenLength + 1 > MaxMessageBytes)
        {
            _discarding = true;
            _highWater = Math.Max(_highWater, _textLength);
            _textLength = _tokenStart;
        }

        if (!_discarding)
        {
            if (_textLength == _text.Length)
            {
                Array.Resize(ref _text, (int)Math.Min((long)_text.Length * 2, MaxMessageBytes + 1L));
            }

            _text[_textLength++] = b;
        }

        _state = next;
        return true;
    }

    /// <summary>The byte completes a token.</summary>
    bool Emit(byte b, QmpJsonTokenType type)
    {
        Keep(b, State.Start);
        Token(type);
        return true;
    }

    /// <summary>The token ended before this byte, which is read again from the start state.</summary>
    bool EmitBefore(QmpJsonTokenType type)
    {
        _state = State.Start;
        Token(type);
        return false;
    }

    /// <summary>A byte no token can continue with: the message ends in error and the input is skipped.</summary>
    bool Stray(byte b)
    {
        Keep(b, State.Recovery);
        var quoted = _discarding ? "" : ModifiedUtf8.Quote(_text.AsSpan(_tokenStart, _textLength - _tokenStart));
        Fail($"JSON parse error, stray '{quoted}'");
        return true;
    }

    /// <summary>QEMU's json_message_process_token: counts nesting, applies the limits, parses a complete message.</summary>
    void Token(QmpJsonTokenType type)
    {
        switch (type)
        {
            case QmpJsonTokenType.LeftBrace: _braces++; break;
            case QmpJsonTokenType.RightBrace: _braces--; break;
            case QmpJsonTokenType.LeftBracket: _brackets++; break;
            case QmpJsonTokenType.RightBracket: _brackets--; break;
        }

        if (_discarding || _messageBytes + _tokenLength + 1 > MaxMessageBytes)
        {
            Fail("JSON token size limit exceeded");
            return;
        }

        if (_tokens.Count + 1 > MaxTokens)
        {
            Fail("JSON token count limit exceeded");
            return;
        }

        if (_braces + _brackets > MaxNesting)
        {
            Fail("JSON nesting depth limit exceeded");
            return;
        }

        _tokens.Add(new QmpJsonToken(type, _tokenStart, (int)_tokenLength));
        _messageBytes += _tokenLength;
        _tokenStart = _textLength;
        if ((_braces > 0 || _brackets > 0) && _braces >= 0 && _brackets >= 0)
        {
            return;
        }

        var (document, error) = QmpJsonParser.Parse(_text.AsSpan(0, _textLength), _tokens);
        Finish(new Message(document, error));
    }

    void Fail(string error) => Finish(new Message(null, error));

    void Finish(Message message)
    {
        _ready.Enqueue(message);
        _highWater = Math.Max(_highWater, _textLength);
        if (_text.Length > KeptCapacity && _highWater <= KeptCapacity)
        {
            _text = new byte[KeptCapacity];
        }

        _highWater = 0;
        var tokenCount = _tokens.Count;
        _tokens.Clear();
        if (_tokens.Capacity > KeptTokens && tokenCount <= KeptTokens)
        {
            _tokens.Capacity = KeptTokens;
        }

        _braces = _brackets = 0;
        _messageBytes = 0;
        _tokenStart = _textLength = 0;
        _tokenLength = 0;
        _discarding = false;
    }
}
