namespace BlockMirror.Qmp.Protocol;

/// <summary>
/// Cuts a monitor's byte stream into top-level JSON values, as QEMU's JSON streamer does, without parsing
/// them: it follows strings, escapes and nesting only. A value larger than <see cref="MaxMessageBytes"/> is
/// not kept but still followed to its end, so that the client gets one error for it and the stream stays
/// in step (a 100 MiB line costs no memory). Bytes outside any object or array form a bad value that ends
/// at the next whitespace or bracket.
/// </summary>
public sealed class QmpInputSplitter
{
    /// <summary>Largest command kept (QEMU caps JSON tokens at 64 MiB; commands here are a few KiB).</summary>
    public const int MaxMessageBytes = 1 << 20;

    /// <summary>Deepest nesting accepted (QEMU's MAX_NESTING).</summary>
    public const int MaxNesting = 1024;

    readonly List<byte> _current = new(4096);
    int _depth;
    bool _inString;
    bool _escape;
    bool _bareValue;
    bool _overflow;
    bool _tooDeep;

    /// <summary>A complete value: its bytes, or why it cannot be used.</summary>
    public readonly record struct Message(byte[]? Json, string? Error);

    /// <summary>Feeds bytes; calls <paramref name="onMessage"/> for every value completed by them.</summary>
    public void Feed(ReadOnlySpan<byte> bytes, Action<Message> onMessage)
    {
        foreach (var b in bytes)
        {
            if (_depth == 0 && !_bareValue)
            {
                if (b is (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n')
                {
                    continue;
                }

                if (b is (byte)'{' or (byte)'[')
                {
                    Open(b);
                }
                else
                {
                    _bareValue = true;
                    Keep(b);
                }

                continue;
            }

            if (_bareValue)
            {
                if (b is (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n' or (byte)'{' or (byte)'[')
                {
                    onMessage(Finish());
                    if (b is (byte)'{' or (byte)'[')
                    {
                        Open(b);
                    }
                }
                else
                {
                    Keep(b);
                }

                continue;
            }

            Keep(b);
            if (_inString)
            {
                if (_escape)
                {
                    _escape = false;
                }
                else if (b == (byte)'\\')
                {
                    _escape = true;
                }
                else if (b == (byte)'"')
                {
                    _inString = false;
                }

                continue;
            }

            switch (b)
            {
                case (byte)'"':
                    _inString = true;
                    break;
                case (byte)'{' or (byte)'[':
                    if (++_depth > MaxNesting)
                    {
                        _tooDeep = true;
                    }

                    break;
                case (byte)'}' or (byte)']':
                    if (--_depth == 0)
                    {
                        onMessage(Finish());
                    }

                    break;
            }
        }
    }

    void Open(byte b)
    {
        _depth = 1;
        Keep(b);
    }

    void Keep(byte b)
    {
        if (_current.Count < MaxMessageBytes)
        {
            _current.Add(b);
        }
        else
        {
            _overflow = true;
        }
    }

    Message Finish()
    {
        Message message;
        if (_overflow)
        {
            message = new Message(null, $"JSON message too large (over {MaxMessageBytes} bytes)");
        }
        else if (_tooDeep)
        {
            message = new Message(null, $"JSON nesting too deep (over {MaxNesting} levels)");
        }
        else if (_bareValue)
        {
            message = new Message(null, "QMP input must be a JSON object");
        }
        else
        {
            message = new Message([.. _current], null);
        }

        _current.Clear();
        _depth = 0;
        _inString = _escape = _bareValue = _overflow = _tooDeep = false;
        return message;
    }
}
