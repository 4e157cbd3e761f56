# OpenMP shim and the per-step team barrier. Every OpenMP call of the kernels goes through
# here, so a build without OpenMP compiles the same code serially (one thread, no barriers).
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static inline int fl_openmp_enabled(void) { return 1; }
    static inline int fl_omp_max_threads(void) { return omp_get_max_threads(); }
    static inline int fl_omp_team_size(void) { return omp_get_num_threads(); }
    static inline int fl_omp_thread_id(void) { return omp_get_thread_num(); }
    #else
    static inline int fl_openmp_enabled(void) { return 0; }
    static inline int fl_omp_max_threads(void) { return 1; }
    static inline int fl_omp_team_size(void) { return 1; }
    static inline int fl_omp_thread_id(void) { return 0; }
    #endif

    #include <sched.h>
    #include <time.h>

    /* A team of threads that steps through the time steps together, and leaves thread 0
     * alone when another member is taken off its core.
     *
     * Each step ends in a barrier (or, for a team of two, a pipeline: fl_team_publish).
     * A member marks the team stalled when its waits since the first barrier add up to
     * more than a quarter of that time and more than a tenth of the call's expected length
     * (steps x its own last step), at least FL_WAIT_MIN_NS. A member that lost its core
     * to other load is gone for a scheduler time slice, milliseconds, again and again; a
     * one-off hiccup of a long call is not worth handing the rest of the call to one
     * thread. The first wait of a call waits for a thread OpenMP may still be starting or
     * waking: it is a stall only past ten times the set-up and at least FL_FIRST_NS.
     * Waits that long are taken for lost cores only while the machine has more runnable
     * threads than cores (/proc/loadavg, read only then): on an otherwise idle machine a
     * long wait is a thread being woken or a hiccup of the host, and handing the call to
     * one thread would not help.
     * When the team is stalled, the last member to arrive publishes `solo`: from the next
     * step on, thread 0 does every member's work and the others leave. Every member's work
     * is a pure function of the previous step, so thread 0 computes exactly what they would
     * have. After a stalled call, fl_team_size() gives one thread to the calls of the next
     * backoff period (doubling while stalls continue, up to FL_BACKOFF_MAX_NS, halving
     * after each clean probe), then probes with the full team again, unless the team would
     * still not find its cores free (fl_machine_busy counting its other threads): then the
     * period starts over without a probe. */
    #define FL_SPIN_NS 20000LL              /* busy-wait this long, then yield the core */
    #define FL_WAIT_MIN_NS 100000LL
    #define FL_FIRST_NS 1000000LL
    #define FL_IDLE_NS 10000000LL           /* after this long without a call, a woken core */
    #define FL_WORTH_WAKING_NS 20000000LL   /* costs milliseconds: worth it for calls this long */
    #define FL_BACKOFF_MIN_NS 20000000LL
    #define FL_BACKOFF_MAX_NS 1000000000LL

    #include <stdio.h>
    #include <unistd.h>

    /* What the stall handling keeps between calls. One copy serves the whole process: the
     * openmp module's, which every other module that includes this shim points fl_shared
     * at when it is imported (fl_share), so a stall seen by one kernel (the LSTM's, the
     * loss's, the optimizer's) sends them all to one thread for the backoff period, and
     * set_adaptive reaches them all. */
    typedef struct {
        long long backoff_until;    /* calls starting before this (fl_now_ns) get one thread */
        long long backoff_ns;       /* the backoff period; 0: none */
        long long last_call_ns;     /* when the last kernel call started or ended */
        int adaptive;               /* stalls are handled; 0: fixed teams (tests) */
        int busy_override;          /* fl_machine_busy's answer when 0 or 1 (tests), else -1 */
    } fl_shared_t;
    static fl_shared_t fl_own_shared = {0, 0, 0, 1, -1};
    static fl_shared_t *fl_shared = &fl_own_shared;
    static inline void fl_share(fl_shared_t *shared) { fl_shared = shared; }
    static inline size_t fl_shared_address(void) { return (size_t)fl_shared; }
    static inline fl_shared_t *fl_own_state(void) { return &fl_own_shared; }
    static inline int fl_adaptive(void) { return fl_shared->adaptive; }
    static inline void fl_set_adaptive(int adaptive) { fl_shared->adaptive = adaptive; }
    static inline int fl_busy_override(void) { return fl_shared->busy_override; }
    static inline void fl_set_busy_override(int busy) { fl_shared->busy_override = busy; }

    /* More runnable threads than online cores right now, counting `extra` threads more
     * (Linux; 1 where unknown), or the override when it is 0 or 1 (tests). */
    static int fl_machine_busy(int extra) {
        int running = 0, total = 0;
        if (fl_shared->busy_override >= 0)
            return fl_shared->busy_override;
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        FILE *f = fopen("/proc/loadavg", "r");
        if (f == NULL)
            return 1;
        if (fscanf(f, "%*f %*f %*f %d/%d", &running, &total) != 2)
            running = 0, cores = 0;
        fclose(f);
        return cores <= 0 || running + extra > cores;
    }

    static inline long long fl_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }

    /* A team that splits the batch (each member steps through its own sequences and reads
     * no other member's rows) does not meet after every step; it lags. Member m > 0
     * publishes the steps it has finished (fl_lag_done) and, before each step, leaves if
     * member 0 now runs alone (fl_lag_go). Member 0 waits only for a member more than
     * FL_LAG_STEPS steps behind it, and after its last step for every member
     * (fl_lag_check, whose waits notice lost cores as the barrier's do). When the team is
     * stalled, member 0 sets `solo`, waits until every member has left or finished, and
     * runs the steps they left (fl_lag_stopped: where each stopped). Larger teams meet at
     * the barrier after every step. */
    #define FL_LAG_STEPS 4
    #define FL_LAG_MEMBERS 8
    typedef struct {
        long long done;     /* steps finished */
        long long left;     /* the step before which the member left, or -1 */
        char pad[48];
    } fl_progress_t;

    /* A team that shares its slices (fl_share_claim): member m's home range of slices is
     * taken from its front by m, and from its back by members done with their own. The
     * word is (step + 1) << 32 | front << 16 | back for the step it was last claimed in;
     * a word of an earlier step stands for the whole range. */
    #define FL_SHARE_MEMBERS 8
    typedef struct {
        long long word;
        char pad[56];
    } fl_range_t;

    typedef struct {
        int n;          /* members */
        int count;      /* arrivals at the current barrier */
        long long generation;   /* barriers completed */
        int stalled;    /* a member lost its core (see above) */
        int solo;       /* thread 0 continues alone (published with the barrier) */
        int adaptive;   /* stalls are handled (fl_adaptive when the call started) */
        long long steps;    /* barriers the call expects */
        /* A pipelined team of two (fl_team_publish): the steps member 0 and member 1 have
         * finished, each on a cache line of its own, and the step from which member 0
         * runs alone (LLONG_MAX: not yet). */
        char pad0[64];
        long long done0;
        char pad1[56];
        long long done1;
        char pad2[56];
        long long solo_step;
        char pad3[56];
        fl_progress_t progress[FL_LAG_MEMBERS];   /* a lagging team's members, one line each */
        fl_range_t ranges[FL_SHARE_MEMBERS];      /* a sharing team's slices (fl_share_claim) */
    } fl_team_t;

    typedef struct {    /* one member's view of the team */
        long long generation;   /* the barrier it is at */
        long long waited_ns;    /* in waits after the first, this call */
        long long left_ns;      /* when it left the previous wait */
        long long judged_ns;    /* waited_ns when the machine was last found not busy */
        long long first_ns;     /* when it left the first barrier (0: not yet) */
    } fl_member_t;

    static inline void fl_team_init(fl_team_t *team, int n, long long steps) {
        team->n = n; team->count = 0; team->generation = 0; team->stalled = 0; team->solo = 0;
        team->adaptive = fl_shared->adaptive;
        team->steps = steps;
        team->done0 = team->done1 = 0;
        team->solo_step = __LONG_LONG_MAX__;
        for (int m = 0; m < FL_LAG_MEMBERS; m++) {
            team->progress[m].done = 0;
            team->progress[m].left = -1;
        }
        for (int m = 0; m < FL_SHARE_MEMBERS; m++)
            team->ranges[m].word = 0;
    }

    /* The next slice of range `range`, [lo, hi), in step `step` of a sharing team: its
     * front slice (its own member), or its back slice (another, `from_back`); -1 when none
     * is left. */
    static inline int fl_share_claim(fl_team_t *team, int range, long long step, int lo,
                                     int hi, int from_back) {
        const long long tag = (step + 1) << 32;
        long long old = __atomic_load_n(&team->ranges[range].word, __ATOMIC_ACQUIRE), word;
        int front, back;
        do {
            if ((old & ~0xffffffffLL) == tag) {
                front = (int)((old >> 16) & 0xffff);
                back = (int)(old & 0xffff);
            } else {
                front = lo;
                back = hi;
            }
            if (front >= back)
                return -1;
            word = tag | (long long)(from_back ? front : front + 1) << 16
                 | (from_back ? back - 1 : back);
        } while (!__atomic_compare_exchange_n(&team->ranges[range].word, &old, word, 1,
                                              __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
        return from_back ? back - 1 : front;
    }

    /* Every member states the team's size (omp_get_num_threads()) before its first
     * barrier: OpenMP may run fewer threads than asked for, e.g. inside another region. */
    static inline void fl_team_join(fl_team_t *team, fl_member_t *me, int n) {
        __atomic_store_n(&team->n, n, __ATOMIC_RELAXED);
        me->generation = 0;
        me->waited_ns = 0;
        me->left_ns = fl_now_ns();
        me->first_ns = 0;
        me->judged_ns = 0;
    }

    /* Wait until *counter reaches target; returns when the member left the wait
     * (fl_now_ns). */
    static inline long long fl_team_wait(fl_team_t *team, fl_member_t *me,
                                         const long long *counter, long long target) {
        long long start = fl_now_ns(), now = start, work = start - me->left_ns, allowed;
        unsigned spins = 0;
        const int first = me->first_ns == 0;
        int judged = 0;
        while (__atomic_load_n(counter, __ATOMIC_ACQUIRE) < target) {
            if (now - start < FL_SPIN_NS) {
    #if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
    #endif
                if ((++spins & 63) == 0)
                    now = fl_now_ns();
            } else {
                sched_yield();
                now = fl_now_ns();
                if (first && !judged && now - start > 10 * work && now - start > FL_FIRST_NS) {
                    judged = 1;
                    if (fl_machine_busy(0))
                        __atomic_store_n(&team->stalled, 1, __ATOMIC_RELEASE);
                }
            }
        }
        now = fl_now_ns();
        if (first)
            return now;
        me->waited_ns += now - start;
        allowed = team->steps * work / 10;
        if (allowed < FL_WAIT_MIN_NS)
            allowed = FL_WAIT_MIN_NS;
        if (me->waited_ns > me->judged_ns + allowed && 4 * me->waited_ns > now - me->first_ns) {
            if (fl_machine_busy(0))
                __atomic_store_n(&team->stalled, 1, __ATOMIC_RELEASE);
            else
                me->judged_ns = me->waited_ns;
        }
        return now;
    }

    /* Wait for every member; returns 1 while this thread still has work in the team. */
    static inline int fl_team_barrier(fl_team_t *team, fl_member_t *me, int tid) {
        if (__atomic_load_n(&team->solo, __ATOMIC_RELAXED))
            return tid == 0;
        me->generation++;
        if (__atomic_add_fetch(&team->count, 1, __ATOMIC_ACQ_REL) == team->n) {
            __atomic_store_n(&team->count, 0, __ATOMIC_RELAXED);
            if (team->adaptive && __atomic_load_n(&team->stalled, __ATOMIC_ACQUIRE))
                __atomic_store_n(&team->solo, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&team->generation, me->generation, __ATOMIC_RELEASE);
            me->left_ns = fl_now_ns();
        } else {
            me->left_ns = fl_team_wait(team, me, &team->generation, me->generation);
        }
        if (me->first_ns == 0)
            me->first_ns = me->left_ns;
        return !__atomic_load_n(&team->solo, __ATOMIC_RELAXED) || tid == 0;
    }

    /* A team of two that splits the hidden units can run its steps as a pipeline instead
     * of meeting at a barrier after each one. Member 0 starts step t with the depths of
     * the product that read its own units of h_{t-1}, then waits for member 1's units;
     * member 1 waits for member 0's units first, then runs the whole product in the order
     * of the depths. Member 1 settles a little behind member 0, and neither waits while
     * the lag stays between the time a cache line takes to cross between the cores and
     * half a step: the crossing is no longer on the path of every step.
     *
     * fl_team_publish: member tid has finished `steps` steps (its units of h_{steps-1} are
     * written). When the team is stalled, member 0 takes the call alone from the step it
     * publishes: member 1 finishes the step it is in and leaves.
     * fl_team_await: wait until the other member has finished `steps` steps; returns 1
     * while this member still has work (member 1 leaves once member 0 runs alone). Lost
     * cores are noticed as at the barrier (fl_team_wait). */
    static inline void fl_team_publish(fl_team_t *team, int tid, long long steps) {
        if (tid == 0 && team->adaptive && team->solo_step == __LONG_LONG_MAX__
                && __atomic_load_n(&team->stalled, __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&team->solo, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&team->solo_step, steps, __ATOMIC_RELAXED);
        }
        __atomic_store_n(tid == 0 ? &team->done0 : &team->done1, steps, __ATOMIC_RELEASE);
    }

    static inline int fl_team_await(fl_team_t *team, fl_member_t *me, int tid,
                                    long long steps) {
        const long long *other = tid == 0 ? &team->done1 : &team->done0;
        if (tid == 0 && team->solo_step < steps)   /* alone: member 1 has left */
            steps = team->solo_step;
        if (__atomic_load_n(other, __ATOMIC_ACQUIRE) < steps) {
            me->left_ns = fl_team_wait(team, me, other, steps);
            if (me->first_ns == 0)
                me->first_ns = me->left_ns;
        }
        return tid == 0 || __atomic_load_n(&team->solo_step, __ATOMIC_RELAXED) > steps;
    }


    /* Member tid > 0 of a lagging team, before step `step`: 1 to run it, 0 to leave
     * (member 0 runs alone from here; the step is published). */
    static inline int fl_lag_go(fl_team_t *team, int tid, long long step) {
        if (!__atomic_load_n(&team->solo, __ATOMIC_ACQUIRE))
            return 1;
        __atomic_store_n(&team->progress[tid].left, step, __ATOMIC_RELEASE);
        return 0;
    }

    /* Member tid > 0 of a lagging team has finished `steps` steps. */
    static inline void fl_lag_done(fl_team_t *team, int tid, long long steps) {
        __atomic_store_n(&team->progress[tid].done, steps, __ATOMIC_RELEASE);
    }

    /* Member 0 of a lagging team of `steps` steps: wait until every member has finished
     * `target` steps. Returns 1 when the team is stalled: then member 0 runs alone from
     * here, and every other member has left or finished (fl_lag_stopped). */
    static inline int fl_lag_check(fl_team_t *team, fl_member_t *me, long long target,
                                   long long steps) {
        int m;
        unsigned spins;
        for (m = 1; m < team->n; m++) {
            if (__atomic_load_n(&team->progress[m].done, __ATOMIC_ACQUIRE) < target) {
                me->left_ns = fl_team_wait(team, me, &team->progress[m].done, target);
                if (me->first_ns == 0)
                    me->first_ns = me->left_ns;
            }
        }
        if (!team->adaptive || !__atomic_load_n(&team->stalled, __ATOMIC_ACQUIRE))
            return 0;
        __atomic_store_n(&team->solo, 1, __ATOMIC_RELEASE);
        for (m = 1; m < team->n; m++) {
            spins = 0;
            while (__atomic_load_n(&team->progress[m].left, __ATOMIC_ACQUIRE) < 0
                   && __atomic_load_n(&team->progress[m].done, __ATOMIC_ACQUIRE) < steps) {
                if (++spins < 4096) {
    #if defined(__x86_64__) || defined(__i386__)
                    __builtin_ia32_pause();
    #endif
                } else {
                    sched_yield();
                }
            }
        }
        return 1;
    }

    /* Member 0 of a lagging team starts a step (the work its waits are judged against). */
    static inline void fl_lag_mark(fl_member_t *me) {
        me->left_ns = fl_now_ns();
    }

    /* The steps member m of a stalled lagging team of `steps` steps has run. */
    static inline long long fl_lag_stopped(const fl_team_t *team, int m, long long steps) {
        long long left = __atomic_load_n(&team->progress[m].left, __ATOMIC_ACQUIRE);
        return left >= 0 ? left : steps;
    }

    /* Member 0 of a stalled lagging team, at the barrier that would follow the steps:
     * let go every member already waiting there (the others find the team solo). */
    static inline void fl_lag_release(fl_team_t *team, fl_member_t *me) {
        me->generation++;
        __atomic_store_n(&team->generation, me->generation, __ATOMIC_RELEASE);
    }

    /* Threads for the next call, expected to take `expected_ns` on one thread: `requested`,
     * or 1 during a backoff period, or 1 for a short call after the cores sat idle (an idle
     * virtual core can take milliseconds to wake; the next call finds it awake). */
    static inline int fl_team_size(int requested, long long expected_ns) {
        long long now = fl_now_ns();
        long long last = __atomic_exchange_n(&fl_shared->last_call_ns, now, __ATOMIC_RELAXED);
        long long backoff_ns;
        if (requested < 2 || !fl_shared->adaptive)
            return requested;
        if (__atomic_load_n(&fl_shared->backoff_until, __ATOMIC_RELAXED) > now)
            return 1;
        backoff_ns = __atomic_load_n(&fl_shared->backoff_ns, __ATOMIC_RELAXED);
        if (backoff_ns && fl_machine_busy(requested - 1)) {
            /* the period is over, but the team would still not find its cores free: a
             * probe would only stall again, so the period starts over */
            __atomic_store_n(&fl_shared->backoff_until, now + backoff_ns, __ATOMIC_RELAXED);
            return 1;
        }
        if (now - last > FL_IDLE_NS && expected_ns < FL_WORTH_WAKING_NS)
            return 1;
        return requested;
    }

    static inline void fl_backoff_reset(void) {   /* and count the cores as awake */
        __atomic_store_n(&fl_shared->backoff_until, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&fl_shared->backoff_ns, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&fl_shared->last_call_ns, fl_now_ns(), __ATOMIC_RELAXED);
    }

    /* A call of a team that met at no barrier (so no member could notice a lost core)
     * counts as stalled when it took ten times its one-thread estimate, and at least
     * FL_FIRST_NS (waking a thread takes less, a lost core a time slice), while the
     * machine was busy. */
    static inline void fl_team_judge_call(fl_team_t *team, long long elapsed_ns,
                                          long long expected_ns) {
        long long allowed = 10 * expected_ns > FL_FIRST_NS ? 10 * expected_ns : FL_FIRST_NS;
        if (team->n > 1 && elapsed_ns > allowed && fl_machine_busy(0))
            __atomic_store_n(&team->stalled, 1, __ATOMIC_RELEASE);
    }

    /* Record how a call with a team of n threads ended, at `ended_ns` (fl_now_ns). */
    static inline void fl_team_report(const fl_team_t *team, long long ended_ns) {
        long long period = __atomic_load_n(&fl_shared->backoff_ns, __ATOMIC_RELAXED);
        __atomic_store_n(&fl_shared->last_call_ns, ended_ns, __ATOMIC_RELAXED);
        if (team->n < 2 || !team->adaptive)
            return;
        if (team->stalled) {
            period = period ? 2 * period : FL_BACKOFF_MIN_NS;
            period = period < FL_BACKOFF_MAX_NS ? period : FL_BACKOFF_MAX_NS;
            __atomic_store_n(&fl_shared->backoff_ns, period, __ATOMIC_RELAXED);
            __atomic_store_n(&fl_shared->backoff_until, ended_ns + period, __ATOMIC_RELAXED);
        } else {
            /* a clean probe halves the period: under intermittent load some probes pass,
             * and a reset would make every other call pay for a stall again */
            period = period / 2 < FL_BACKOFF_MIN_NS ? 0 : period / 2;
            __atomic_store_n(&fl_shared->backoff_ns, period, __ATOMIC_RELAXED);
        }
    }

    /* Which of two ways a repeated call (a stream step) runs: 0 on the calling thread
     * alone, 1 split across the team. Which is faster depends on where the host puts the
     * virtual CPUs: on the development VM, with the cores near each other, a split S1 step
     * took 3.0-3.1 us against 3.6 us on one thread, and 4.8-6.0 us while they sat far apart
     * (the parallel region's start and the exchanged state cross between them). So the
     * chooser times both: FL_TRIAL_CALLS calls each way (the split first), keeps the way
     * with the lower mean (each trial's first call left out: it wakes the other threads, or
     * reads the weights back from the other core) for `keep` calls, then compares again;
     * `keep` starts at FL_KEEP_MIN and doubles up to FL_KEEP_MAX while the kept way keeps
     * winning, so a settled stream spends under 1 % of its calls on trials. The mean, not the median: on a busy machine a split
     * call now and then waits a scheduler time slice for its other thread, which the
     * median of a trial hides (a median-chosen S1 stream took 4-8 us a step under two
     * competing processes against 3.6-4 on one thread). And while the machine has more
     * runnable threads than cores (fl_machine_busy, read when a kept period ends) the
     * stream keeps to one thread without trying the split, whose calls would wait for a
     * time slice now and then. Calls the backoff runs on one thread are not recorded. */
    #define FL_TRIAL_CALLS 16
    #define FL_KEEP_MIN 256
    #define FL_KEEP_MAX 65536

    typedef struct {
        int way;            /* the way kept */
        int trial;          /* the way on trial, or -1 while keeping */
        int first_trial;    /* the first of the two trials runs now */
        long long left;     /* calls left in this phase */
        long long keep;     /* calls to keep the way after the next comparison */
        long long total[2]; /* ns of each way's last trial */
    } fl_chooser_t;

    static inline void fl_chooser_init(fl_chooser_t *c) {
        c->way = 0; c->trial = 1; c->first_trial = 1; c->left = FL_TRIAL_CALLS;
        c->keep = FL_KEEP_MIN / 2;   /* doubled at the first comparison it wins */
        c->total[0] = c->total[1] = 0;
    }

    /* The way of the next call. */
    static inline int fl_chooser_way(const fl_chooser_t *c) {
        return c->trial >= 0 ? c->trial : c->way;
    }

    /* Threads for the next call that may split: fl_team_size's count, or 1 where the
     * chooser keeps the calling thread alone; *timed says whether the chooser picked them
     * (then record the call with fl_chooser_record). */
    static inline int fl_chooser_threads(const fl_chooser_t *c, int requested,
                                         long long expected_ns, int *timed) {
        int n = fl_team_size(requested, expected_ns);
        *timed = n > 1 && fl_shared->adaptive;
        return *timed && fl_chooser_way(c) == 0 ? 1 : n;
    }

    /* Record that the call of fl_chooser_way took `ns`. */
    static inline void fl_chooser_record(fl_chooser_t *c, long long ns) {
        if (c->trial >= 0 && c->left < FL_TRIAL_CALLS)
            c->total[c->trial] += ns;
        if (--c->left > 0)
            return;
        if (c->trial < 0 && fl_machine_busy(0)) {  /* keeping ends on a busy machine */
            c->way = 0;
            c->keep = 2 * c->keep < FL_KEEP_MAX ? 2 * c->keep : FL_KEEP_MAX;
            c->left = c->keep;
            return;
        }
        if (c->trial < 0) {                  /* keeping ends: try the other way */
            c->trial = !c->way; c->first_trial = 1; c->left = FL_TRIAL_CALLS;
            c->total[0] = c->total[1] = 0;
            return;
        }
        if (c->first_trial) {                /* then the way it competes with */
            c->trial = !c->trial; c->first_trial = 0; c->left = FL_TRIAL_CALLS;
            return;
        }
        int best = c->total[1] < c->total[0];
        c->keep = best == c->way ? (2 * c->keep < FL_KEEP_MAX ? 2 * c->keep : FL_KEEP_MAX)
                                 : FL_KEEP_MIN;
        c->way = best; c->trial = -1; c->left = c->keep;
    }

    /* part(arg, k, parts) for every k < parts: a one-shot call (a product, the loss) split
     * between up to n_threads threads, parts being what OpenMP gives, or run whole on the
     * calling thread (k = 0, parts = 1) when the backoff or a short estimate gives it one
     * thread. expected_ns: the call's length on one thread, for fl_team_size and
     * fl_team_judge_call (a member that met no barrier is judged by the whole call). */
    typedef void (*fl_part_fn)(void *arg, int part, int parts);
    static inline void fl_run_parts(fl_part_fn part, void *arg, int n_threads,
                                    long long expected_ns) {
        fl_team_t team;
        long long started;
        n_threads = fl_team_size(n_threads > 1 ? n_threads : 1, expected_ns);
        if (n_threads == 1) {
            part(arg, 0, 1);
            return;
        }
        fl_team_init(&team, n_threads, 0);
        started = fl_now_ns();
        #pragma omp parallel num_threads(n_threads)
        {
            if (fl_omp_thread_id() == 0)
                team.n = fl_omp_team_size();    /* OpenMP may give fewer than asked */
            part(arg, fl_omp_thread_id(), fl_omp_team_size());
        }
        long long ended = fl_now_ns();
        fl_team_judge_call(&team, ended - started, expected_ns);
        fl_team_report(&team, ended);
    }
    """
    int fl_openmp_enabled() noexcept nogil
    int fl_omp_max_threads() noexcept nogil
    int fl_omp_team_size() noexcept nogil      # threads in the current parallel region
    int fl_omp_thread_id() noexcept nogil
    ctypedef struct fl_team_t:
        int n
        int stalled
        int solo
        long long solo_step
    ctypedef struct fl_member_t:
        pass
    void fl_team_init(fl_team_t* team, int n, long long steps) noexcept nogil
    void fl_team_join(fl_team_t* team, fl_member_t* me, int n) noexcept nogil
    int fl_team_barrier(fl_team_t* team, fl_member_t* me, int tid) noexcept nogil
    void fl_team_publish(fl_team_t* team, int tid, long long steps) noexcept nogil
    int fl_team_await(fl_team_t* team, fl_member_t* me, int tid, long long steps) noexcept nogil
    enum: FL_LAG_STEPS
    enum: FL_LAG_MEMBERS
    enum: FL_SHARE_MEMBERS
    int fl_share_claim(fl_team_t* team, int range, long long step, int lo, int hi,
                       int from_back) noexcept nogil
    int fl_lag_go(fl_team_t* team, int tid, long long step) noexcept nogil
    void fl_lag_done(fl_team_t* team, int tid, long long steps) noexcept nogil
    int fl_lag_check(fl_team_t* team, fl_member_t* me, long long target,
                     long long steps) noexcept nogil
    long long fl_lag_stopped(const fl_team_t* team, int m, long long steps) noexcept nogil
    void fl_lag_release(fl_team_t* team, fl_member_t* me) noexcept nogil
    void fl_lag_mark(fl_member_t* me) noexcept nogil
    int fl_team_size(int requested, long long expected_ns) noexcept nogil
    void fl_team_report(const fl_team_t* team, long long ended_ns) noexcept nogil
    void fl_team_judge_call(fl_team_t* team, long long elapsed_ns,
                            long long expected_ns) noexcept nogil
    ctypedef void (*fl_part_fn)(void* arg, int part, int parts) noexcept nogil
    void fl_run_parts(fl_part_fn part, void* arg, int n_threads,
                      long long expected_ns) noexcept nogil
    ctypedef struct fl_chooser_t:
        int way
    void fl_chooser_init(fl_chooser_t* c) noexcept nogil
    int fl_chooser_way(const fl_chooser_t* c) noexcept nogil
    void fl_chooser_record(fl_chooser_t* c, long long ns) noexcept nogil
    int fl_chooser_threads(const fl_chooser_t* c, int requested, long long expected_ns,
                           int* timed) noexcept nogil
    long long fl_now_ns() noexcept nogil
    void fl_backoff_reset() noexcept nogil
    ctypedef struct fl_shared_t:
        pass
    void fl_share(fl_shared_t* shared) noexcept nogil
    size_t fl_shared_address() noexcept nogil
    fl_shared_t* fl_own_state() noexcept nogil
    int fl_adaptive() noexcept nogil
    void fl_set_adaptive(int adaptive) noexcept nogil
    int fl_busy_override() noexcept nogil
    void fl_set_busy_override(int busy) noexcept nogil

cdef int kernel_threads() noexcept nogil    # fastlstm.get_num_threads(), in C (openmp.pyx)
cdef fl_shared_t* shared_state() noexcept nogil    # the process's stall handling (openmp.pyx)
