-- Refreshes asked for while one runs are coalesced: each waited for the lock, then ran the whole
-- refresh again, so an operator asking three times at 3 a.m. queued three full refreshes, and
-- every process of a deploy added its own. Now a refresh that began after a caller asked (or after
-- p_fresh_since, a deploy's start) saw everything that caller wants: its counts are answered and
-- the views are not refreshed again. The refresh itself is 0002's function, renamed, called with
-- the lock already held (advisory locks are re-entrant in a session), so its recorded start and
-- duration are now the refresh's own, not the wait for the lock before it.
DO $$
BEGIN
  IF to_regprocedure('outpost_refresh_integrity(text, boolean)') IS NOT NULL THEN
    ALTER FUNCTION outpost_refresh_integrity(text, boolean) RENAME TO outpost_refresh_integrity_views;
  END IF;
END
$$;
--> statement-breakpoint
CREATE OR REPLACE FUNCTION outpost_refresh_integrity(
  p_mode text DEFAULT 'manual',
  p_wait boolean DEFAULT true,
  p_fresh_since timestamptz DEFAULT NULL
)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  fresh_since timestamptz := coalesce(p_fresh_since, clock_timestamp());
  found jsonb;
BEGIN
  -- Not waiting: gone at once if another refresh holds the lock; held, taking it again is free.
  IF NOT p_wait AND NOT pg_try_advisory_xact_lock(7246002) THEN
    RETURN NULL;
  END IF;
  PERFORM pg_advisory_xact_lock(7246002);
  -- A volatile function's statements each see what committed before them: the refresh that held
  -- the lock until now is visible here.
  SELECT counts INTO found
    FROM integrity_refreshes
   WHERE started_at >= fresh_since
   ORDER BY id DESC
   LIMIT 1;
  IF found IS NOT NULL THEN
    RETURN found;
  END IF;
  RETURN outpost_refresh_integrity_views(p_mode, true);
END
$$;
