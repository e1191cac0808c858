using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Blkdebug;

/// <summary>
/// The event-driven half of blkdebug, with QEMU's semantics: a state (1 at open), rules filed by event, and
/// the list of armed inject-error rules. An event arms the inject-error rules filed under it whose state is
/// the current one, replacing whatever was armed before (only when it arms at least one), and applies the
/// first of its matching set-state rules; all compare with the state from before the event. A request then
/// fails by the first armed rule that covers it.
/// </summary>
sealed class BlkdebugStateMachine
{
    readonly Lock _lock = new();
    readonly List<BlkdebugInjectError>?[] _injects = new List<BlkdebugInjectError>?[BlkdebugEventNames.Count];
    readonly List<BlkdebugSetState>?[] _setStates = new List<BlkdebugSetState>?[BlkdebugEventNames.Count];
    readonly List<BlkdebugInjectError> _armed = [];
    int _state = 1;

    public BlkdebugStateMachine(IReadOnlyList<BlkdebugInjectError> injects, IReadOnlyList<BlkdebugSetState> setStates)
    {
        foreach (var rule in injects)
        {
            (_injects[(int)rule.Event] ??= []).Add(rule);
        }

        foreach (var rule in setStates)
        {
            (_setStates[(int)rule.Event] ??= []).Add(rule);
        }
    }

    /// <summary>The current state.</summary>
    public int State
    {
        get
        {
            lock (_lock)
            {
                return _state;
            }
        }
    }

    /// <summary>The armed inject-error rules, in the order a request is checked against them.</summary>
    public IReadOnlyList<BlkdebugInjectError> Armed
    {
        get
        {
            lock (_lock)
            {
                return [.. _armed];
            }
        }
    }

    /// <summary>Handles one event; allocation-free (the lists are reused).</summary>
    public void Raise(BlkdebugEvent e)
    {
        var injects = _injects[(int)e];
        var setStates = _setStates[(int)e];
        if (injects is null && setStates is null)
        {
            return;
        }

        lock (_lock)
        {
            var old = _state;
            if (injects is not null)
            {
                var cleared = false;
                foreach (var rule in injects)
                {
                    if (rule.State != 0 && rule.State != old)
                    {
                        continue;
                    }

                    if (!cleared)
                    {
                        _armed.Clear();
                        cleared = true;
                    }

                    _armed.Add(rule);
                }
            }

            if (setStates is not null)
            {
                // QEMU walks its rules newest first and the last one applied wins: the first declared.
                foreach (var rule in setStates)
                {
                    if (rule.State == 0 || rule.State == old)
                    {
                        _state = rule.NewState;
                        break;
                    }
                }
            }
        }
    }

    /// <summary>
    /// The rule that fails this request, or null. A once-rule that fires is removed for good; a rule with
    /// errno 0 that covers the request lets it through and keeps the rules after it from firing.
    /// </summary>
    public BlkdebugInjectError? Check(BlockOperation operation, long offset, long length)
    {
        lock (_lock)
        {
            for (var i = 0; i < _armed.Count; i++)
            {
                var rule = _armed[i];
                if (!rule.Covers(operation, offset, length))
                {
                    continue;
                }

                if (rule.Errno == 0)
                {
                    return null;
                }

                if (rule.Once)
                {
                    _armed.RemoveAt(i);
                    _injects[(int)rule.Event]!.Remove(rule);
                }

                return rule;
            }

            return null;
        }
    }
}
