CREATE TABLE "blob_leases" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"key" text NOT NULL,
	"expires_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "checkpoint_key" text;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "checkpoint_step" integer;--> statement-breakpoint
CREATE INDEX "blob_leases_key" ON "blob_leases" USING btree ("key");--> statement-breakpoint
CREATE INDEX "blob_leases_expires" ON "blob_leases" USING btree ("expires_at");