using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Blkdebug;

/// <summary>Options of the blkdebug filter.</summary>
/// <param name="Rules">Our own rules: active from the start, changeable while running (<see cref="BlkdebugFilter.AddRule"/>).</param>
/// <param name="Align">Request alignment to impose on parents (QEMU's <c>align</c>), 0 for the child's.</param>
/// <param name="MaxTransfer">Largest read or write to accept (QEMU's <c>max-transfer</c>), 0 for the child's.</param>
/// <param name="MaxWriteZeroes">Largest write-zeroes to accept (QEMU's <c>max-write-zero</c>), 0 for the child's.</param>
/// <param name="MaxDiscard">Largest discard to accept (QEMU's <c>max-discard</c>), 0 for the child's.</param>
/// <param name="InjectErrors">QEMU's <c>inject-error</c> rules, armed by events (<see cref="BlkdebugStateMachine"/>).</param>
/// <param name="SetStates">QEMU's <c>set-state</c> rules.</param>
public sealed record BlkdebugOptions(IReadOnlyList<BlkdebugRule>? Rules = null, int Align = 0, int MaxTransfer = 0, long MaxWriteZeroes = 0, long MaxDiscard = 0,
    IReadOnlyList<BlkdebugInjectError>? InjectErrors = null, IReadOnlyList<BlkdebugSetState>? SetStates = null);

/// <summary>
/// A filter that fails chosen requests (QEMU's blkdebug, nbdkit's error filter). It has two kinds of rule.
/// QEMU's (<c>inject-error</c>, <c>set-state</c>, from the node's options or its <c>config</c> file) are armed
/// by the events the node above raises on this one (<see cref="IBlkdebugEventSink"/>), with QEMU's
/// semantics (<see cref="BlkdebugStateMachine"/>). Ours (<see cref="BlkdebugRule"/>) are active from the
/// moment they are added and can be added and removed while requests run. A request is checked against
/// QEMU's armed rules first, then ours in the order they were added; the first rule that fires decides the
/// error, and the request never reaches the child.
/// </summary>
public sealed class BlkdebugFilter : FilterDriver, IBlkdebugEventSink
{
    public const string Name = DriverNames.Blkdebug;

    readonly Lock _lock = new();
    readonly string _nodeName;
    readonly BlockLimits? _limits;
    readonly List<ActiveRule> _rules = [];
    readonly BlkdebugStateMachine? _events;
    long _injected;

    BlkdebugFilter(NodeEdge child, string nodeName, BlkdebugOptions options)
        : base(child)
    {
        _nodeName = nodeName;
        if (options.Align > 0 || options.MaxTransfer > 0 || options.MaxWriteZeroes > 0 || options.MaxDiscard > 0)
        {
            var limits = child.Node.Limits;
            _limits = limits with
            {
                RequestAlignment = Math.Max(options.Align, limits.RequestAlignment),
                MaxTransfer = options.MaxTransfer > 0 ? Math.Min(options.MaxTransfer, limits.MaxTransfer) : limits.MaxTransfer,
                MaxWriteZeroes = options.MaxWriteZeroes > 0 ? Math.Min(options.MaxWriteZeroes, limits.MaxWriteZeroes) : limits.MaxWriteZeroes,
                MaxDiscard = options.MaxDiscard > 0 ? Math.Min(options.MaxDiscard, limits.MaxDiscard) : limits.MaxDiscard,
            };
        }

        foreach (var rule in options.Rules ?? [])
        {
            AddRule(rule);
        }

        if (options.InjectErrors is { Count: > 0 } || options.SetStates is { Count: > 0 })
        {
            _events = new BlkdebugStateMachine(options.InjectErrors ?? [], options.SetStates ?? []);
            // QEMU raises "none" once as the node is made, so a rule filed under it is armed (or a state set)
            // from the first request on, without knowing which real event comes first.
            _events.Raise(BlkdebugEvent.None);
        }
    }

    /// <summary>The state QEMU's set-state rules move (1 at open).</summary>
    public int State => _events?.State ?? 1;

    /// <summary>QEMU's inject-error rules that events have armed, in the order requests are checked against them.</summary>
    public IReadOnlyList<BlkdebugInjectError> ArmedRules => _events?.Armed ?? [];

    /// <summary>An event the node above raised on this one: arms rules and changes the state.</summary>
    public void OnEvent(BlkdebugEvent e) => _events?.Raise(e);

    /// <summary>Creates a blkdebug node above <paramref name="image"/>.</summary>
    public static ValueTask<BlockNode> OpenAsync(BlockGraph graph, string? nodeName, BlockNode image, BlkdebugOptions? options = null, bool readOnly = false, CancellationToken cancellationToken = default)
    {
        options ??= new BlkdebugOptions();
        if (options.Align < 0 || (options.Align > 0 && !System.Numerics.BitOperations.IsPow2(options.Align)))
        {
            throw new ArgumentException($"blkdebug: align must be a power of 2, got {options.Align}");
        }

        var align = Math.Max(1, options.Align);
        if (options.MaxTransfer < 0 || options.MaxTransfer % align != 0 || options.MaxWriteZeroes < 0 || options.MaxWriteZeroes % align != 0 ||
            options.MaxDiscard < 0 || options.MaxDiscard % align != 0)
        {
            throw new ArgumentException($"blkdebug: max-transfer, max-write-zero and max-discard must be multiples of align ({align})");
        }

        return graph.CreateNodeAsync(nodeName, readOnly, (node, _) =>
        {
            var edge = node.AttachChild(ChildNames.Image, image);
            return ValueTask.FromResult<IBlockDriver>(new BlkdebugFilter(edge, node.Name, options));
        }, cancellationToken);
    }

    public override string DriverName => Name;

    public override BlockLimits Limits => _limits ?? base.Limits;

    /// <summary>How many requests a rule has failed so far.</summary>
    public long InjectedCount => Interlocked.Read(ref _injected);

    /// <summary>The rules now active (spent once-rules are gone).</summary>
    public IReadOnlyList<BlkdebugRule> Rules
    {
        get
        {
            lock (_lock)
            {
                return [.. _rules.Select(r => r.Rule)];
            }
        }
    }

    /// <summary>Adds a rule; it applies to requests that start after this returns.</summary>
    public BlkdebugRule AddRule(BlkdebugRule rule)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rule.After);
        ArgumentOutOfRangeException.ThrowIfNegative(rule.Offset);
        lock (_lock)
        {
            _rules.Add(new ActiveRule(rule));
        }

        return rule;
    }

    /// <summary>Removes a rule (by reference); requests that start after this returns no longer see it.</summary>
    public bool RemoveRule(BlkdebugRule rule)
    {
        lock (_lock)
        {
            return _rules.RemoveAll(r => ReferenceEquals(r.Rule, rule)) > 0;
        }
    }

    public void ClearRules()
    {
        lock (_lock)
        {
            _rules.Clear();
        }
    }

    /// <summary>
    /// Throws EIO when a request breaks the limits this filter declares (the pipeline above must never send
    /// one; QEMU's blkdebug asserts the same). Returns the injected error if a rule fires for this request,
    /// and whether it fails at once; QEMU's rules without <c>immediately</c> fail after one turn of the scheduler.
    /// </summary>
    (BlockIOException Error, bool Immediately)? Verdict(BlockOperation operation, long offset, long length)
    {
        if (_limits is { } limits)
        {
            CheckLimits(limits, operation, offset, length);
        }

        if (_events?.Check(operation, offset, length) is { } armed)
        {
            Interlocked.Increment(ref _injected);
            var errno = (BlockErrno)armed.Errno;
            var error = BlockIOException.Create(errno, _nodeName, operation, offset, length,
                $"{errno.Describe()} (injected by blkdebug rule on {armed.Event.ToWireName()})");
            return (error, armed.Immediately);
        }

        BlkdebugRule? fired = null;
        lock (_lock)
        {
            for (var i = 0; i < _rules.Count; i++)
            {
                var active = _rules[i];
                if (!active.Rule.Matches(operation, offset, length))
                {
                    continue;
                }

                // Count matches per rule, so "after N" means the N+1st matching request fails.
                if (active.Matched++ < active.Rule.After)
                {
                    continue;
                }

                fired = active.Rule;
                if (fired.Once)
                {
                    _rules.RemoveAt(i);
                }

                break;
            }
        }

        if (fired is null)
        {
            return null;
        }

        Interlocked.Increment(ref _injected);
        return (BlockIOException.Create(fired.Errno, _nodeName, operation, offset, length,
            $"{fired.Errno.Describe()} (injected by blkdebug rule {fired})"), true);
    }

    static ValueTask Fail((BlockIOException Error, bool Immediately) verdict) =>
        verdict.Immediately ? ValueTask.FromException(verdict.Error) : FailAfterYieldAsync(verdict.Error);

    static async ValueTask FailAfterYieldAsync(BlockIOException error)
    {
        await Task.Yield();
        throw error;
    }

    static async ValueTask<T> FailAfterYieldAsync<T>(BlockIOException error)
    {
        await Task.Yield();
        throw error;
    }

    void CheckLimits(BlockLimits limits, BlockOperation operation, long offset, long length)
    {
        long max;
        switch (operation)
        {
            case BlockOperation.Read or BlockOperation.Write:
                max = limits.MaxTransfer;
                break;
            case BlockOperation.WriteZeroes:
                max = limits.MaxWriteZeroes;
                break;
            case BlockOperation.Discard:
                max = limits.MaxDiscard;
                break;
            default:
                // Flush, truncate and block status are not data requests the limits apply to.
                return;
        }

        var alignment = limits.RequestAlignment;
        var aligned = offset % alignment == 0 && ((offset + length) % alignment == 0 || offset + length == Length);
        if (length > max || !aligned)
        {
            throw BlockIOException.Create(BlockErrno.EIO, _nodeName, operation, offset, length,
                $"request breaks the node's limits (align {alignment}, max {max})");
        }
    }

    public override ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        return Verdict(BlockOperation.Read, offset, buffer.Length) is { } verdict ? Fail(verdict) : base.ReadAsync(offset, buffer, cancellationToken);
    }

    public override ValueTask ReadVectorAsync(long offset, IReadOnlyList<Memory<byte>> buffers, CancellationToken cancellationToken)
    {
        return Verdict(BlockOperation.Read, offset, IoVectors.TotalLength(buffers)) is { } verdict ? Fail(verdict) : base.ReadVectorAsync(offset, buffers, cancellationToken);
    }

    public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> buffer, RequestFlags flags, CancellationToken cancellationToken)
    {
        return Verdict(BlockOperation.Write, offset, buffer.Length) is { } verdict ? Fail(verdict) : base.WriteAsync(offset, buffer, flags, cancellationToken);
    }

    public override ValueTask WriteVectorAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> buffers, RequestFlags flags, CancellationToken cancellationToken)
    {
        return Verdict(BlockOperation.Write, offset, IoVectors.TotalLength(buffers)) is { } verdict ? Fail(verdict) : base.WriteVectorAsync(offset, buffers, flags, cancellationToken);
    }

    public override ValueTask WriteZeroesAsync(long offset, long length, RequestFlags flags, CancellationToken cancellationToken)
    {
        return Verdict(BlockOperation.WriteZeroes, offset, length) is { } verdict ? Fail(verdict) : base.WriteZeroesAsync(offset, length, flags, cancellationToken);
    }

    public override ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken)
    {
        return Verdict(BlockOperation.Discard, offset, length) is { } verdict ? Fail(verdict) : base.DiscardAsync(offset, length, cancellationToken);
    }

    public override ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        return Verdict(BlockOperation.Flush, 0, 0) is { } verdict ? Fail(verdict) : base.FlushAsync(cancellationToken);
    }

    public override ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken)
    {
        if (Verdict(BlockOperation.BlockStatus, offset, length) is { } verdict)
        {
            return verdict.Immediately ? ValueTask.FromException<BlockStatus>(verdict.Error) : FailAfterYieldAsync<BlockStatus>(verdict.Error);
        }

        return base.GetBlockStatusAsync(offset, length, cancellationToken);
    }

    public override ValueTask TruncateAsync(long length, CancellationToken cancellationToken)
    {
        return Verdict(BlockOperation.Truncate, 0, length) is { } verdict ? Fail(verdict) : base.TruncateAsync(length, cancellationToken);
    }

    /// <summary>A rule with its match counter.</summary>
    sealed class ActiveRule(BlkdebugRule rule)
    {
        public BlkdebugRule Rule { get; } = rule;

        public long Matched { get; set; }
    }
}
