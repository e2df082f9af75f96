CREATE TABLE "blob_leases" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"key" text NOT NULL,
	"expires_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
ALTER TABLE "chat_targets" ADD COLUMN "lease_owner" text;--> statement-breakpoint
ALTER TABLE "chat_targets" ADD COLUMN "lease_until" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "chat_targets" ADD COLUMN "attempts" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "chat_targets" ADD COLUMN "next_attempt_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "chat_targets" ADD COLUMN "parts" jsonb DEFAULT '{}'::jsonb NOT NULL;--> statement-breakpoint
ALTER TABLE "chat_targets" ADD COLUMN "failed_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "chat_targets" ADD COLUMN "last_error" text;--> statement-breakpoint
ALTER TABLE "generations" ADD COLUMN "engine_prompt" text;--> statement-breakpoint
ALTER TABLE "generations" ADD COLUMN "style" text;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "checkpoint_key" text;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "checkpoint_step" integer;--> statement-breakpoint
CREATE INDEX "blob_leases_key" ON "blob_leases" USING btree ("key");--> statement-breakpoint
CREATE INDEX "blob_leases_expires" ON "blob_leases" USING btree ("expires_at");